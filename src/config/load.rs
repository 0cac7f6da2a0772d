//! The layered loader: defaults, file, environment, overrides, each a figment provider whose
//! metadata lets an error name its [`Origin`].

use std::path::PathBuf;

use figment::error::{Actual, Kind};
use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::Serialize;

use super::error::{ConfigError, Origin};
use super::{validate, Config, DEFAULT_CONFIG_TOML};

/// Environment variables starting with this prefix are configuration keys; the rest of the
/// name is the dotted key with `__` for `.`, in any case: `TWINMQ_LISTENERS__TLS__BIND`.
pub const ENV_PREFIX: &str = "TWINMQ_";

const DEFAULTS_NAME: &str = "embedded defaults";
const FILE_NAME: &str = "configuration file";
const ENV_NAME: &str = "environment";
const OVERRIDE_NAME: &str = "command-line override";

/// Values set on the command line, applied last. Keys are dotted (`mqtt.max_inflight`).
///
/// Built from `key=value` arguments ([`Overrides::parse_assignment`]; the value is read
/// like an environment value: `100`, `true`, `[mqtt, x]`, else a string) or from typed
/// values ([`Overrides::set`], [`Overrides::merge_serialized`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    dict: Dict,
}

impl Overrides {
    pub fn new() -> Self {
        Overrides::default()
    }

    /// Parses each `key=value` argument, e.g. from a repeated `--set` flag.
    pub fn from_assignments<I, S>(assignments: I) -> Result<Overrides, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut overrides = Overrides::new();
        for assignment in assignments {
            overrides.parse_assignment(assignment.as_ref())?;
        }
        Ok(overrides)
    }

    /// Adds one `key=value` override.
    pub fn parse_assignment(&mut self, text: &str) -> Result<(), ConfigError> {
        let bad = || ConfigError::BadOverride { text: text.into() };
        let (key, value) = text.split_once('=').ok_or_else(bad)?;
        let key = key.trim();
        if key.is_empty() || key.split('.').any(str::is_empty) {
            return Err(bad());
        }
        let value: Value = value.trim().parse().map_err(|_| bad())?;
        self.insert(key, value);
        Ok(())
    }

    /// Sets `key` (dotted) to any serializable value: `set("mqtt.max_inflight", 100)`.
    pub fn set(mut self, key: &str, value: impl Serialize) -> Result<Overrides, ConfigError> {
        let value = Value::serialize(value).map_err(|e| ConfigError::Other {
            message: format!("override {key}: {e}"),
        })?;
        self.insert(key, value);
        Ok(self)
    }

    /// Merges a struct shaped like (a part of) the configuration, e.g. the flags of a
    /// command, whose unset fields are skipped (`skip_serializing_if = "Option::is_none"`).
    pub fn merge_serialized(&mut self, value: &impl Serialize) -> Result<(), ConfigError> {
        let value = Value::serialize(value).map_err(|e| ConfigError::Other {
            message: format!("overrides: {e}"),
        })?;
        match value {
            Value::Dict(_, dict) => {
                for (key, value) in dict {
                    self.insert(&key, value);
                }
                Ok(())
            }
            _ => Err(ConfigError::Other {
                message: "overrides must serialize to a map of keys".into(),
            }),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.dict.is_empty()
    }

    fn insert(&mut self, key: &str, value: Value) {
        if let Value::Dict(_, dict) = figment::util::nest(key, value) {
            merge_dict(&mut self.dict, dict);
        }
    }
}

/// Builds a configuration from chosen layers. [`Config::load`] is
/// `Loader::new().file(..).overrides(..).load()`; tests inject the environment with
/// [`Loader::env_vars`] instead of touching the process's.
#[derive(Debug, Clone)]
pub struct Loader {
    file: Option<PathBuf>,
    env: EnvSource,
    overrides: Overrides,
}

#[derive(Debug, Clone)]
enum EnvSource {
    Process,
    Vars(Vec<(String, String)>),
}

impl Default for Loader {
    fn default() -> Self {
        Loader::new()
    }
}

impl Loader {
    /// The defaults and the process environment.
    pub fn new() -> Loader {
        Loader {
            file: None,
            env: EnvSource::Process,
            overrides: Overrides::new(),
        }
    }

    /// Adds a TOML file layer; the file must exist.
    pub fn file(mut self, path: impl Into<PathBuf>) -> Loader {
        self.file = Some(path.into());
        self
    }

    /// Uses these variables instead of the process environment.
    pub fn env_vars<I, K, V>(mut self, vars: I) -> Loader
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.env = EnvSource::Vars(
            vars.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        );
        self
    }

    /// Ignores the environment.
    pub fn without_env(self) -> Loader {
        self.env_vars(Vec::<(String, String)>::new())
    }

    pub fn overrides(mut self, overrides: Overrides) -> Loader {
        self.overrides = overrides;
        self
    }

    /// The merged layers, before deserialization.
    pub fn figment(&self) -> Result<Figment, ConfigError> {
        let mut figment = Figment::new().merge(Layer::toml(
            DEFAULT_CONFIG_TOML,
            Metadata::named(DEFAULTS_NAME),
            Origin::Defaults,
        )?);
        if let Some(path) = &self.file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError::io("read configuration file", path, e))?;
            figment = figment.merge(Layer::toml(
                &text,
                Metadata::from(FILE_NAME, path.as_path()),
                Origin::File(path.clone()),
            )?);
        }
        let vars: Vec<(String, String)> = match &self.env {
            EnvSource::Process => std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
            EnvSource::Vars(vars) => vars.clone(),
        };
        figment = figment.merge(Layer::env(&vars));
        if !self.overrides.is_empty() {
            figment = figment.merge(Layer {
                metadata: Metadata::named(OVERRIDE_NAME),
                dict: self.overrides.dict.clone(),
            });
        }
        Ok(figment)
    }

    /// Merges, deserializes and validates.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let figment = self.figment()?;
        let config: Config = figment.extract().map_err(|e| from_figment(e, &figment))?;
        validate::validate(&config, &|key: &str| origin_of(&figment, key))?;
        Ok(config)
    }
}

/// The layer that supplied `key` (dotted) in `figment`.
pub(crate) fn origin_of(figment: &Figment, key: &str) -> Origin {
    match figment.find_metadata(key) {
        Some(metadata) => origin_from_metadata(metadata, &key.split('.').collect::<Vec<_>>()),
        None => Origin::Defaults,
    }
}

fn origin_from_metadata<K: AsRef<str>>(metadata: &Metadata, path: &[K]) -> Origin {
    if let Some(file) = metadata.source.as_ref().and_then(|s| s.file_path()) {
        return Origin::File(file.to_path_buf());
    }
    let key = || path.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(".");
    match metadata.name.as_ref() {
        DEFAULTS_NAME => Origin::Defaults,
        ENV_NAME => Origin::Env(metadata.interpolate(&Profile::Default, path)),
        OVERRIDE_NAME => Origin::Override(key()),
        _ => Origin::Code,
    }
}

/// Turns figment's deserialization error into one naming key, value and origin.
fn from_figment(error: figment::Error, figment: &Figment) -> ConfigError {
    let origin = error
        .metadata
        .as_ref()
        .map(|m| origin_from_metadata(m, &error.path))
        .unwrap_or(Origin::Code);
    let key = error.path.join(".");
    match error.kind {
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
            ConfigError::InvalidValue {
                key,
                value: render_actual(&actual),
                origin,
                reason: format!("expected {}", plain_expected(&expected)),
            }
        }
        Kind::UnknownVariant(found, expected) => ConfigError::InvalidValue {
            key,
            value: format!("{found:?}"),
            origin,
            reason: format!("expected one of {}", quoted_list(expected)),
        },
        Kind::UnknownField(found, expected) => ConfigError::UnknownKey {
            key: if key.is_empty() {
                found
            } else if key.ends_with(&found) {
                key
            } else {
                format!("{key}.{found}")
            },
            origin,
            expected: quoted_list(expected),
        },
        Kind::MissingField(field) => ConfigError::MissingKey {
            key: if key.is_empty() {
                field.into_owned()
            } else {
                format!("{key}.{field}")
            },
        },
        Kind::Message(message) if !key.is_empty() => match figment.find_value(&key) {
            Ok(value) => ConfigError::InvalidValue {
                value: render_value(&value),
                reason: if key.ends_with(".bind") {
                    format!("{message} (expected IP:port, e.g. \"127.0.0.1:1883\")")
                } else {
                    message
                },
                key,
                origin,
            },
            Err(_) => ConfigError::Other {
                message: format!("{message} for {key} in {origin}"),
            },
        },
        kind => ConfigError::Other {
            message: if key.is_empty() {
                format!("{kind} in {origin}")
            } else {
                format!("{kind} for {key} in {origin}")
            },
        },
    }
}

fn render_actual(actual: &Actual) -> String {
    match actual {
        Actual::Str(s) => format!("{s:?}"),
        Actual::Bool(b) => b.to_string(),
        Actual::Unsigned(n) => n.to_string(),
        Actual::Signed(n) => n.to_string(),
        Actual::Float(n) => n.to_string(),
        Actual::Char(c) => format!("{c:?}"),
        Actual::Seq => "a list".into(),
        Actual::Map => "a table".into(),
        other => other.to_string(),
    }
}

/// serde names tables after their Rust type; users know them as tables.
fn plain_expected(expected: &str) -> String {
    if expected.starts_with("struct ") {
        "a table of keys".into()
    } else {
        expected.into()
    }
}

fn render_value(value: &Value) -> String {
    match value {
        Value::String(_, s) => format!("{s:?}"),
        Value::Char(_, c) => format!("{c:?}"),
        Value::Bool(_, b) => b.to_string(),
        Value::Num(_, n) => match n.to_u128() {
            Some(n) => n.to_string(),
            None => n
                .to_i128()
                .map(|n| n.to_string())
                .or_else(|| n.to_f64().map(|n| n.to_string()))
                .unwrap_or_default(),
        },
        Value::Empty(..) => "an empty value".into(),
        Value::Dict(..) => "a table".into(),
        Value::Array(_, items) => format!(
            "[{}]",
            items
                .iter()
                .map(render_value)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn quoted_list(items: &[&str]) -> String {
    items
        .iter()
        .map(|item| format!("{item:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn merge_dict(into: &mut Dict, from: Dict) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(Value::Dict(_, existing)), Value::Dict(_, incoming)) => {
                merge_dict(existing, incoming)
            }
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// One configuration layer with metadata that names its origin.
struct Layer {
    metadata: Metadata,
    dict: Dict,
}

impl Layer {
    fn toml(text: &str, metadata: Metadata, origin: Origin) -> Result<Layer, ConfigError> {
        let mut data = Toml::string(text).data().map_err(|e| ConfigError::Syntax {
            origin,
            message: e.kind.to_string(),
        })?;
        let dict = data.remove(&Profile::Default).unwrap_or_default();
        Ok(Layer { metadata, dict })
    }

    fn env(vars: &[(String, String)]) -> Layer {
        let mut dict = Dict::new();
        for (name, value) in vars {
            let Some(rest) = strip_prefix_ignore_case(name, ENV_PREFIX) else {
                continue;
            };
            let key = rest
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect::<Vec<_>>()
                .join(".");
            // Nested names (TWINMQ_SECTION__KEY) and TWINMQ_DATA_DIR are configuration;
            // single-word names (TWINMQ_LOG, TWINMQ_PYTHON) belong to other tools. A typo
            // in a nested name is still reported as an unknown key.
            if !key.contains('.') && key != "data_dir" {
                continue;
            }
            let value: Value = value
                .trim()
                .parse()
                .unwrap_or_else(|_| Value::from(value.clone()));
            if let Value::Dict(_, nested) = figment::util::nest(&key, value) {
                merge_dict(&mut dict, nested);
            }
        }
        let metadata = Metadata::named(ENV_NAME).interpolater(|_: &Profile, keys: &[&str]| {
            let keys: Vec<String> = keys.iter().map(|k| k.to_ascii_uppercase()).collect();
            format!("{ENV_PREFIX}{}", keys.join("__"))
        });
        Layer { metadata, dict }
    }
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        self.metadata.clone()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

fn strip_prefix_ignore_case<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    let head = name.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &name[prefix.len()..])
}
