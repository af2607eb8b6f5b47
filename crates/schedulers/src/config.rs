//! Reading and writing diffusers' `scheduler_config.json`.
//!
//! Every scheduler config is a serde struct whose field names are diffusers' keys, with
//! diffusers' defaults. Keys a struct does not know are kept in its `extra` map: they are
//! reported with a warning when read and written back unchanged on save, so a config
//! survives a round trip through Ember. Bad values (an unknown `beta_schedule`, say) are
//! errors that list the valid values.

use ember_core::{Error, Result};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::{Map, Value};

/// Keys diffusers writes into every config that carry no hyper-parameter.
const BOOKKEEPING_KEYS: [&str; 2] = ["_class_name", "_diffusers_version"];

/// Implemented by every scheduler config struct.
pub trait SchedulerConfig: Serialize + DeserializeOwned + Default + Clone {
    /// diffusers' class name this config belongs to.
    const CLASS_NAME: &'static str;
    /// The keys this struct did not recognise.
    fn extra(&self) -> &Map<String, Value>;
    /// Checks values that serde alone cannot (ranges, combinations).
    fn validate(&self) -> Result<()> {
        Ok(())
    }
}

/// Parses a config for `C` from a JSON object, warning about unknown keys.
pub fn parse_config<C: SchedulerConfig>(json: &Value) -> Result<C> {
    let obj = json.as_object().ok_or_else(|| Error::Parse {
        what: format!("{} config", C::CLASS_NAME),
        message: "expected a JSON object".into(),
    })?;
    let cfg: C = serde_json::from_value(Value::Object(obj.clone())).map_err(|e| Error::Parse {
        what: format!("{} config", C::CLASS_NAME),
        message: e.to_string(),
    })?;
    for key in unknown_keys(&cfg) {
        log::warn!("{}: config key `{key}` is not used by Ember and is kept as is", C::CLASS_NAME);
    }
    cfg.validate()?;
    Ok(cfg)
}

/// The keys of `cfg` that Ember did not recognise (bookkeeping keys excluded).
pub fn unknown_keys<C: SchedulerConfig>(cfg: &C) -> Vec<String> {
    cfg.extra().keys().filter(|k| !BOOKKEEPING_KEYS.contains(&k.as_str())).cloned().collect()
}

/// Serialises a config as diffusers writes it: `_class_name` first, then every field.
pub fn config_to_json<C: SchedulerConfig>(cfg: &C) -> Value {
    let mut out = Map::new();
    out.insert("_class_name".into(), Value::String(C::CLASS_NAME.into()));
    if let Ok(Value::Object(fields)) = serde_json::to_value(cfg) {
        for (k, v) in fields {
            if k != "_class_name" {
                out.insert(k, v);
            }
        }
    }
    Value::Object(out)
}

/// Serde helper: a `f64` that diffusers may also write as an integer or `null`-free float.
/// (serde already accepts integers for `f64`; this module exists for `Option<Vec<f64>>`
/// fields such as `trained_betas`, which diffusers may write as `null`.)
pub mod nullable {
    /// Deserialises `null` as the type's default.
    pub fn default_on_null<'de, D, T>(d: D) -> Result<T, D::Error>
    where
        D: serde::Deserializer<'de>,
        T: serde::Deserialize<'de> + Default,
    {
        use serde::Deserialize;
        Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
    }
}
