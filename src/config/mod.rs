//! Configuration: the YAML schema of SPEC §8, its defaults, `$VAR` expansion, Go-style
//! durations, replica URLs, and validation that names every problem's place.
//!
//! Pure apart from the loader: parsing takes text, an environment lookup and the working and
//! home directories, and returns a [`Config`] or every problem at once. Only `load` reads
//! anything (the file, the environment, `/etc/passwd`); nothing here opens a database or a
//! store. This file only declares the parts and re-exports what the rest of the crate uses;
//! it holds no logic.

mod age;
mod duration;
mod env;
mod hints;
mod load;
mod overlap;
mod paths;
mod raw;
mod schema;
mod sse;
#[cfg(test)]
mod testing;
mod url;
mod validate;

pub(crate) use duration::go_duration;
pub use duration::parse_duration;
pub use env::expand_env_vars;
pub(crate) use load::default_config_path;
pub use paths::default_meta_dir;
pub use schema::{
    defaults, AgeConfig, AgeIdentity, Config, ConfigError, DbConfig, LogLevel, LoggingConfig,
    ReplicaConfig, ReplicaTarget, S3Config, Sse, SseCustomerKey,
};
pub(crate) use sse::{decode_customer_key, SSE_CUSTOMER_ALGORITHM};
pub use url::parse_replica_url;
pub(crate) use url::{host_port, is_url, redact_url};
