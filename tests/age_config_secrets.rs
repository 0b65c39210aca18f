//! No configuration error, `Debug` or log line ever shows a secret written in the wrong
//! shape or place: an age identity (`AGE-SECRET-KEY-1…`) or an SSE-C key where a map, a list
//! or a path belongs. Each message still names the key's place, its line and the shape that
//! was expected.

use std::path::Path;

use litestream::config::Config;

/// A valid X25519 identity (test-only; never used for data).
const ID: &str = "AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX";
/// The part of [`ID`] after its prefix: no message may hold any of it.
const ID_BODY: &str = "GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX";
/// A fake SSE-C key (base64 of 32 bytes).
const SSE: &str = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=";
/// A number where a secret belongs: it must not be echoed either.
const NUM: &str = "918273645546372819";

const HEAD: &str = "dbs:\n  - path: /a.db\n    replicas:\n      - url: s3://b/p\n";

fn problems(yaml: &str) -> String {
    let text = format!("{HEAD}{yaml}");
    let env = |_: &str| None;
    match Config::parse(
        &text,
        "litestream.yml",
        true,
        &env,
        Path::new("/work/dir"),
        Some(Path::new("/home/user")),
    ) {
        Ok(c) => panic!("expected an error for\n{text}\ngot {c:?}"),
        Err(e) => e.problems.join("\n"),
    }
}

/// The error for `yaml` names `place` and `line`, says `expected`, and holds none of `secret`.
fn refused(yaml: &str, secret: &str, place: &str, line: usize, expected: &str) {
    let e = problems(yaml);
    assert!(!e.contains(secret), "echoed the value:\n{e}");
    assert!(
        !e.to_ascii_uppercase()
            .contains(&secret.to_ascii_uppercase()),
        "echoed the value (in another case):\n{e}"
    );
    assert!(e.contains(&format!("line {line} ")), "no line {line}:\n{e}");
    assert!(e.contains(place), "no place {place}:\n{e}");
    assert!(e.contains(expected), "does not say {expected:?}:\n{e}");
}

const AGE: &str = "dbs[0].replicas[0].age";

#[test]
fn age_as_a_scalar_or_list_never_shows_it() {
    let map = "must be a map with `recipients` and/or `identities` lists";
    refused(&format!("        age: {ID}\n"), ID_BODY, AGE, 5, map);
    refused(&format!("        age: \"{ID}\"\n"), ID_BODY, AGE, 5, map);
    refused(&format!("        age: !key {ID}\n"), ID_BODY, AGE, 5, map);
    refused(&format!("        age: {NUM}\n"), NUM, AGE, 5, map);
    refused(&format!("        age: [{ID}]\n"), ID_BODY, AGE, 5, map);
    refused("        age: true\n", "true", AGE, 5, map);
}

#[test]
fn a_secret_written_as_a_key_name_is_not_shown() {
    // `age:` then the identity on the next line with a trailing colon: a map key.
    refused(
        &format!("        age:\n          {ID}: x\n"),
        ID_BODY,
        AGE,
        6,
        "unknown key",
    );
    refused(
        &format!("        {SSE}: x\n"),
        SSE,
        "dbs[0].replicas[0]",
        5,
        "unknown key",
    );
}

#[test]
fn recipients_in_the_wrong_shape_never_show_it() {
    let place = "dbs[0].replicas[0].age.recipients";
    let list = "must be a list of recipients";
    refused(
        &format!("        age:\n          recipients: {ID}\n"),
        ID_BODY,
        place,
        6,
        list,
    );
    refused(
        &format!("        age:\n          recipients: {NUM}\n"),
        NUM,
        place,
        6,
        list,
    );
    refused(
        &format!("        age:\n          recipients:\n            {ID}: 1\n"),
        ID_BODY,
        place,
        7,
        "not a map",
    );
    let entry = "dbs[0].replicas[0].age.recipients[0]";
    let one = "a recipient (age1…)";
    refused(
        &format!("        age:\n          recipients:\n            - {{a: {ID}}}\n"),
        ID_BODY,
        entry,
        7,
        one,
    );
    refused(
        &format!("        age:\n          recipients:\n            - [{ID}]\n"),
        ID_BODY,
        entry,
        7,
        one,
    );
    // An identity in quotes (from a docker --env-file) where a recipient belongs.
    refused(
        &format!("        age:\n          recipients:\n            - \"'{ID}'\"\n"),
        ID_BODY,
        entry,
        7,
        "not a recipient",
    );
}

#[test]
fn identities_in_the_wrong_shape_never_show_it() {
    let place = "dbs[0].replicas[0].age.identities";
    let list = "must be a list of identities";
    refused(
        &format!("        age:\n          identities: {ID}\n"),
        ID_BODY,
        place,
        6,
        list,
    );
    refused(
        &format!("        age:\n          identities: {NUM}\n"),
        NUM,
        place,
        6,
        list,
    );
    refused(
        &format!("        age:\n          identities:\n            {ID}: 1\n"),
        ID_BODY,
        place,
        7,
        "not a map",
    );
    let entry = "dbs[0].replicas[0].age.identities[0]";
    let one = "an identity (AGE-SECRET-KEY-1…) or the path of an identity file";
    refused(
        &format!("        age:\n          identities:\n            - {{a: {ID}}}\n"),
        ID_BODY,
        entry,
        7,
        one,
    );
    refused(
        &format!("        age:\n          identities:\n            - [{ID}]\n"),
        ID_BODY,
        entry,
        7,
        one,
    );
}

#[test]
fn sse_keys_in_the_wrong_shape_or_field_never_show_it() {
    let r = "dbs[0].replicas[0]";
    let s = "expected a string";
    refused(
        &format!("        sse-customer-key: [{SSE}]\n"),
        SSE,
        r,
        5,
        s,
    );
    refused(
        &format!("        sse-customer-key: {{{SSE}: 1}}\n"),
        SSE,
        r,
        5,
        s,
    );
    refused(
        &format!("        sse-customer-key:\n          - {SSE}\n"),
        SSE,
        r,
        6,
        s,
    );
    refused(
        &format!("        secret-access-key: [{SSE}]\n"),
        SSE,
        r,
        5,
        s,
    );
    // The key in the algorithm's field.
    let e = problems(&format!(
        "        endpoint: http://127.0.0.1:9000\n        sse-customer-algorithm: {SSE}\n        sse-customer-key: {SSE}\n"
    ));
    assert!(!e.contains(SSE), "{e}");
    assert!(e.contains("sse-customer-algorithm: must be AES256"), "{e}");
    // A wrong key, not base64 or not 32 bytes, is named and never shown.
    for bad in ["q83vEjRWeJq83vEjRWeJ!!", "q83vEjRWeJq83vEjRWeJ", NUM] {
        let e = problems(&format!(
            "        endpoint: http://127.0.0.1:9000\n        sse-customer-key: {bad}\n"
        ));
        assert!(!e.contains(bad), "{e}");
        assert!(e.contains("sse-customer-key: "), "{e}");
    }
}
