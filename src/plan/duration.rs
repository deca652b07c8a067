//! Human durations in plans: `90s`, `10m`, `1h30m`.

use std::fmt;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written the way people write it (`90s`, `10m`, `1h30m`, `500ms`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub fn parse(text: &str) -> Result<Self, String> {
        humantime::parse_duration(text.trim()).map(HumanDuration).map_err(|e| {
            format!(
                "`{text}` is not a duration ({e}): write a number and a unit, such as `90s`, `10m` or `1h30m`"
            )
        })
    }

    pub fn get(self) -> Duration {
        self.0
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        HumanDuration::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl JsonSchema for HumanDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A duration: a number and a unit, such as `90s`, `10m`, `1h30m` or `500ms`.",
            "pattern": "^\\s*([0-9]+\\s*[a-zA-Z]+\\s*)+$",
            "examples": ["5s", "30m"]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!(HumanDuration::parse("90s").unwrap().get(), Duration::from_secs(90));
        assert_eq!(HumanDuration::parse("10m").unwrap().get(), Duration::from_secs(600));
        assert_eq!(HumanDuration::parse("1h30m").unwrap().get(), Duration::from_secs(5400));
        assert!(HumanDuration::parse("5 parsecs").unwrap_err().contains("`90s`"));
        assert!(HumanDuration::parse("").is_err());
    }
}
