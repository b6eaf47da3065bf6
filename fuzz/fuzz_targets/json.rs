//! Arbitrary JSON for the targets, bounded in depth and width.

use arbitrary::{Arbitrary, Result, Unstructured};
use serde_json::{Map, Value};

/// A JSON document built from fuzzer bytes.
#[derive(Debug)]
pub struct Json(pub Value);

impl<'a> Arbitrary<'a> for Json {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        value(u, 6).map(Json)
    }
}

fn value(u: &mut Unstructured<'_>, depth: u32) -> Result<Value> {
    let kind = if depth == 0 { u.int_in_range(0..=4)? } else { u.int_in_range(0..=6)? };
    Ok(match kind {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => Value::from(u.arbitrary::<i64>()?),
        3 => serde_json::Number::from_f64(u.arbitrary()?).map_or(Value::Null, Value::Number),
        4 => Value::String(u.arbitrary()?),
        5 => {
            let len = u.int_in_range(0..=8)?;
            Value::Array((0..len).map(|_| value(u, depth - 1)).collect::<Result<_>>()?)
        }
        _ => {
            let len = u.int_in_range(0..=6)?;
            let mut map = Map::new();
            for _ in 0..len {
                map.insert(u.arbitrary()?, value(u, depth - 1)?);
            }
            Value::Object(map)
        }
    })
}
