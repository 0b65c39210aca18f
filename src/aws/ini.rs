//! The AWS shared config and credentials files (`~/.aws/config`, `~/.aws/credentials`): a
//! small INI reader and the lookup of one profile across both files. Pure: the caller reads
//! the files.
//!
//! As the AWS SDKs read them: `[name]` sections in the credentials file, `[profile name]`
//! (or `[default]`) in the config file, `key = value` lines, full-line `#` and `;` comments,
//! indented lines continuing the key above (nested settings such as `s3 =`, which we do not
//! use and skip). Where both files set a key of one profile, the credentials file wins.

use std::collections::BTreeMap;

/// The settings of one profile, keys in lower case.
pub(crate) type Profile = BTreeMap<String, String>;

/// Sections of an INI text, in order, with their `key = value` pairs; an error names the
/// line that is neither (1-based).
pub(crate) fn parse(text: &str) -> Result<Vec<(String, Profile)>, String> {
    let mut sections: Vec<(String, Profile)> = Vec::new();
    let mut last_key: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if raw.starts_with([' ', '\t']) && last_key.is_some() {
            // A nested setting (`s3 =` followed by indented lines): not ours.
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let Some(name) = rest.split(']').next().filter(|_| rest.contains(']')) else {
                return Err(format!("line {}: a section header lacks its `]`", i + 1));
            };
            sections.push((name.trim().to_string(), Profile::new()));
            last_key = None;
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!(
                "line {}: expected `key = value` or `[section]`",
                i + 1
            ));
        };
        let Some((_, section)) = sections.last_mut() else {
            return Err(format!("line {}: a setting before any [section]", i + 1));
        };
        let key = k.trim().to_ascii_lowercase();
        section.insert(key.clone(), v.trim().to_string());
        last_key = Some(key);
    }
    Ok(sections)
}

/// Profile `name` from the config file's sections (`[profile name]`, or `[default]` for
/// `default`) merged with the credentials file's (`[name]`), which win; `None` when neither
/// file has it.
pub(crate) fn profile(
    config: &[(String, Profile)],
    credentials: &[(String, Profile)],
    name: &str,
) -> Option<Profile> {
    let mut found = false;
    let mut out = Profile::new();
    for (section, values) in config {
        let this = match section.split_once(char::is_whitespace) {
            Some(("profile", rest)) => rest.trim() == name,
            Some(_) => false,
            None => section == name && name == "default",
        };
        if this {
            found = true;
            out.extend(values.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }
    for (section, values) in credentials {
        if section == name {
            found = true;
            out.extend(values.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }
    found.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_keys_comments_and_nested_settings() {
        let text = "# top\n[default]\nregion = eu-west-1\n s3 =\n   max_concurrent_requests = 2\n\n[profile dev]\n; c\nrole_arn=arn:aws:iam::1:role/r\nsource_profile = default\nCredential_Process = /bin/x --a=b\n";
        let s = parse(text).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].0, "default");
        assert_eq!(s[0].1.get("region").map(String::as_str), Some("eu-west-1"));
        assert!(!s[0].1.contains_key("max_concurrent_requests"));
        assert_eq!(s[1].0, "profile dev");
        assert_eq!(
            s[1].1.get("credential_process").map(String::as_str),
            Some("/bin/x --a=b")
        );
    }

    #[test]
    fn bad_lines_are_named() {
        assert_eq!(
            parse("[a]\nnot a setting\n").unwrap_err(),
            "line 2: expected `key = value` or `[section]`"
        );
        assert!(parse("k = v\n").unwrap_err().starts_with("line 1:"));
        assert!(parse("[a\n").unwrap_err().contains("`]`"));
    }

    #[test]
    fn profiles_merge_config_and_credentials_files() {
        let config = parse("[default]\nregion = us-west-2\n[profile dev]\nregion = eu-central-1\nrole_arn = R\n[dev]\nregion = ignored\n").unwrap();
        let creds = parse("[default]\naws_access_key_id = AK\naws_secret_access_key = SK\n[dev]\nregion = from-creds\n").unwrap();
        let d = profile(&config, &creds, "default").unwrap();
        assert_eq!(d.get("region").map(String::as_str), Some("us-west-2"));
        assert_eq!(d.get("aws_access_key_id").map(String::as_str), Some("AK"));
        let dev = profile(&config, &creds, "dev").unwrap();
        assert_eq!(dev.get("region").map(String::as_str), Some("from-creds"));
        assert_eq!(dev.get("role_arn").map(String::as_str), Some("R"));
        assert!(profile(&config, &creds, "nope").is_none());
    }
}
