//! Where a key sits in a configuration file's text, for checks that judge settings of several
//! files together after each was parsed on its own (a policy's `drift` against an environment's
//! `[drift]`), so their messages name the line like every other config error.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

/// One step of a key: a table key, and for an array of tables the index (from 0) within it.
#[derive(Clone, Copy)]
struct Step<'a> {
    name: &'a str,
    index: Option<usize>,
}

/// Follows `steps` through a TOML value and yields the offset of the value at their end.
/// Only that value is asked for its position; the tables on the way may be implicit ones
/// (`[slack.users.U1]` without `[slack]`), which the TOML parser gives no position.
#[derive(Clone, Copy)]
struct Follow<'a> {
    steps: &'a [Step<'a>],
}

impl<'de> DeserializeSeed<'de> for Follow<'_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<usize>, D::Error> {
        if self.steps.is_empty() {
            let value: Spanned<IgnoredAny> = serde::Deserialize::deserialize(deserializer)?;
            return Ok(Some(value.span().start));
        }
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Follow<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML table")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<usize>, A::Error> {
        let Some((step, rest)) = self.steps.split_first() else {
            return Ok(None);
        };
        let mut found = None;
        while let Some(key) = map.next_key::<String>()? {
            if key != step.name {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let rest = Follow { steps: rest };
            found = match step.index {
                None => map.next_value_seed(rest)?,
                Some(index) => map.next_value_seed(Element { index, rest })?,
            };
        }
        Ok(found)
    }
}

/// The `index`-th element of an array, followed further by `rest`.
struct Element<'a> {
    index: usize,
    rest: Follow<'a>,
}

impl<'de> DeserializeSeed<'de> for Element<'_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<usize>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Element<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<usize>, A::Error> {
        let mut found = None;
        let mut at = 0;
        loop {
            let more = if at == self.index {
                seq.next_element_seed(self.rest)?.map(|f| found = f)
            } else {
                seq.next_element::<IgnoredAny>()?.map(|_| ())
            };
            if more.is_none() {
                return Ok(found);
            }
            at += 1;
        }
    }
}

/// The 1-based line of the value of `key` in TOML `text`: dotted for tables, `name[n]` (from
/// 1, as messages count them) for the n-th table of an array, e.g. `snapshot.provider`,
/// `health[2].enums`, `slack.users.U0123.roles.prod`. `None` when the key is absent or the
/// text is not TOML.
pub(crate) fn line_of_key(text: &str, key: &str) -> Option<usize> {
    let mut steps = Vec::new();
    for part in key.split('.') {
        steps.push(
            match part.strip_suffix(']').and_then(|p| p.split_once('[')) {
                Some((name, n)) => Step {
                    name,
                    index: Some(n.parse::<usize>().ok()?.checked_sub(1)?),
                },
                None => Step {
                    name: part,
                    index: None,
                },
            },
        );
    }
    let offset = Follow { steps: &steps }
        .deserialize(toml::Deserializer::new(text))
        .ok()??;
    Some(crate::error::line_of(text, offset))
}

#[cfg(test)]
mod tests {
    use super::line_of_key;

    #[test]
    fn keys_are_found_in_tables_arrays_and_inline_tables() {
        let text =
            "url_env = \"U\"\n\n[snapshot]\nprovider = \"neon\"\n\n[[health]]\nkind = \"sql\"\n\
                    [[health]]\nkind = \"schema\"\nenums = { Role = [\"A\"] }\n\
                    [slack.users.U1]\nroles = { prod = \"approver\" }\n";
        assert_eq!(line_of_key(text, "url_env"), Some(1));
        assert_eq!(line_of_key(text, "snapshot.provider"), Some(4));
        assert_eq!(line_of_key(text, "health[2].enums"), Some(10));
        assert_eq!(line_of_key(text, "health[1].kind"), Some(7));
        assert_eq!(line_of_key(text, "slack.users.U1.roles.prod"), Some(12));
        assert_eq!(line_of_key(text, "health[3].kind"), None);
        assert_eq!(line_of_key(text, "drift"), None);
        assert_eq!(line_of_key("not = [toml", "not"), None);
    }
}
