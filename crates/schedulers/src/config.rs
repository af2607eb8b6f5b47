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
        log::warn!(
            "{}: config key `{key}` is not used by Ember and is kept as is",
            C::CLASS_NAME
        );
    }
    cfg.validate()?;
    Ok(cfg)
}

/// The keys of `cfg` that Ember did not recognise (bookkeeping keys excluded).
pub fn unknown_keys<C: SchedulerConfig>(cfg: &C) -> Vec<String> {
    cfg.extra()
        .keys()
        .filter(|k| !BOOKKEEPING_KEYS.contains(&k.as_str()))
        .cloned()
        .collect()
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

/// Parses the text of a `scheduler_config.json` as Python's `json` module writes it.
///
/// Python writes non-finite floats as the bare tokens `NaN`, `Infinity` and `-Infinity`
/// (DPM-Solver's default `lambda_min_clipped` is `-Infinity`), which strict JSON rejects.
/// Outside string literals those tokens are turned into the strings `"NaN"`, `"Infinity"`
/// and `"-Infinity"`, which the config structs' float fields accept.
pub fn parse_config_text(text: &str, what: &str) -> Result<Value> {
    let mut out = String::with_capacity(text.len() + 16);
    let (mut in_string, mut escaped) = (false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        if c == '"' {
            in_string = true;
        } else if let Some(token) = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|t| rest.starts_with(t))
        {
            out.push('"');
            out.push_str(token);
            out.push('"');
            rest = &rest[token.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    serde_json::from_str(&out).map_err(|e| Error::Parse {
        what: what.to_string(),
        message: e.to_string(),
    })
}

/// Writes a config as diffusers does (two-space indent), with the non-finite markers
/// `"NaN"`, `"Infinity"` and `"-Infinity"` written back as Python's bare tokens, so that
/// diffusers reads the file unchanged.
pub fn config_to_text(value: &Value) -> String {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| "{}".to_string());
    text.replace("\"-Infinity\"", "-Infinity")
        .replace("\"Infinity\"", "Infinity")
        .replace("\"NaN\"", "NaN")
}

/// Checks a config's `prediction_type` against the ones a scheduler class supports (shared
/// by the `validate()` of every scheduler family).
pub fn check_prediction(
    prediction: ember_core::Prediction,
    supported: &[ember_core::Prediction],
    class_name: &str,
) -> Result<()> {
    if supported.contains(&prediction) {
        return Ok(());
    }
    let names: Vec<&str> = supported.iter().map(|p| p.name()).collect();
    Err(Error::config(
        "prediction_type",
        format!(
            "{class_name} supports {}, not `{}`",
            names.join(", "),
            prediction.name()
        ),
    ))
}

/// Checks `num_train_timesteps` ∈ [1, `max`]. The upper limit is a guard against absurd
/// allocations; it differs between scheduler families (see their `MAX_TRAIN_TIMESTEPS`).
pub fn check_num_train_timesteps_at_most(n: usize, max: usize) -> Result<()> {
    if n == 0 || n > max {
        return Err(Error::config(
            "num_train_timesteps",
            format!("must be between 1 and {max}, got {n}"),
        ));
    }
    Ok(())
}

/// Serde helper for floats that may be infinite (`lambda_min_clipped = -inf`): written as
/// the marker strings of [`config_to_text`], read from numbers, markers or `null` (= −∞,
/// what earlier Ember versions wrote).
pub mod nonfinite_f64 {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes finite values as numbers and non-finite ones as `"-Infinity"`, `"Infinity"`, `"NaN"`.
    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else if v.is_nan() {
            s.serialize_str("NaN")
        } else if *v > 0.0 {
            s.serialize_str("Infinity")
        } else {
            s.serialize_str("-Infinity")
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Num(f64),
        Text(String),
    }

    /// Reads a number, one of the markers (also `inf` / `-inf`), or `null` meaning −∞.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        match Option::<Repr>::deserialize(d)? {
            None => Ok(f64::NEG_INFINITY),
            Some(Repr::Num(v)) => Ok(v),
            Some(Repr::Text(s)) => match s.trim().to_ascii_lowercase().as_str() {
                "-inf" | "-infinity" => Ok(f64::NEG_INFINITY),
                "inf" | "infinity" | "+inf" | "+infinity" => Ok(f64::INFINITY),
                "nan" => Ok(f64::NAN),
                other => other.parse::<f64>().map_err(|_| {
                    serde::de::Error::custom(format!("expected a number, got the string `{s}`"))
                }),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_nonfinite_tokens_round_trip() {
        let text = r#"{"a": -Infinity, "b": "keep -Infinity \" NaN", "c": [NaN, Infinity, 1.5]}"#;
        let v = parse_config_text(text, "test").unwrap();
        assert_eq!(v["a"], "-Infinity");
        assert_eq!(v["b"], "keep -Infinity \" NaN");
        assert_eq!(v["c"][0], "NaN");
        let back = config_to_text(&v);
        assert!(back.contains("\"a\": -Infinity"));
        assert!(parse_config_text("{\"a\": -Inf}", "test").is_err());
    }
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
