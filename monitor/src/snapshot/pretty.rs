//! serde_json's pretty layout (two-space indentation), byte for byte, with
//! fewer writes: a separator, newline and indentation go out as one slice,
//! where `PrettyFormatter` writes the indentation one level at a time. A
//! large process's snapshot is a hundred thousand entries of a dozen lines,
//! and the writes were a third of its JSON time.

use std::io::{self, Write};

use serde::Serialize;
use serde_json::ser::Formatter;

/// `,` then a newline and indentation for up to [`MAX_FAST_DEPTH`] levels.
const BREAK: [u8; 2 + 2 * MAX_FAST_DEPTH] = {
    let mut bytes = [b' '; 2 + 2 * MAX_FAST_DEPTH];
    bytes[0] = b',';
    bytes[1] = b'\n';
    bytes
};
const MAX_FAST_DEPTH: usize = 32;

/// Writes `value` as `serde_json::to_writer_pretty` would.
pub fn to_writer<W: Write, T: Serialize + ?Sized>(writer: W, value: &T) -> serde_json::Result<()> {
    let mut serializer = serde_json::Serializer::with_formatter(writer, Pretty::default());
    value.serialize(&mut serializer)
}

#[derive(Default)]
struct Pretty {
    depth: usize,
    has_value: bool,
}

impl Pretty {
    /// An optional comma, a newline and the current indentation.
    fn line_break<W: ?Sized + Write>(&self, writer: &mut W, comma: bool) -> io::Result<()> {
        let start = usize::from(!comma);
        if self.depth <= MAX_FAST_DEPTH {
            return writer.write_all(&BREAK[start..2 + 2 * self.depth]);
        }
        writer.write_all(&BREAK[start..2])?;
        for _ in 0..self.depth {
            writer.write_all(b"  ")?;
        }
        Ok(())
    }

    fn open<W: ?Sized + Write>(&mut self, writer: &mut W, bracket: &[u8]) -> io::Result<()> {
        self.depth += 1;
        self.has_value = false;
        writer.write_all(bracket)
    }

    fn close<W: ?Sized + Write>(&mut self, writer: &mut W, bracket: &[u8]) -> io::Result<()> {
        self.depth -= 1;
        if self.has_value {
            self.line_break(writer, false)?;
        }
        writer.write_all(bracket)
    }
}

impl Formatter for Pretty {
    fn begin_array<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.open(writer, b"[")
    }

    fn end_array<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.close(writer, b"]")
    }

    fn begin_array_value<W: ?Sized + Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        self.line_break(writer, !first)
    }

    fn end_array_value<W: ?Sized + Write>(&mut self, _writer: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }

    fn begin_object<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.open(writer, b"{")
    }

    fn end_object<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.close(writer, b"}")
    }

    fn begin_object_key<W: ?Sized + Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        self.line_break(writer, !first)
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b": ")
    }

    fn end_object_value<W: ?Sized + Write>(&mut self, _writer: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn both(value: &serde_json::Value) -> (String, String) {
        let mut ours = Vec::new();
        to_writer(&mut ours, value).unwrap();
        (
            String::from_utf8(ours).unwrap(),
            serde_json::to_string_pretty(value).unwrap(),
        )
    }

    #[test]
    fn writes_what_serde_json_writes() {
        let value = json!({
            "empty object": {},
            "empty array": [],
            "nested": [1, [2, [3, {"a": null, "b": [true, false]}]], {"c": "d\n\"e\""}],
            "number": -1.5,
        });
        let (ours, theirs) = both(&value);
        assert_eq!(ours, theirs);
        for scalar in [json!(1), json!("x"), json!(null), json!([]), json!({})] {
            let (ours, theirs) = both(&scalar);
            assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn deeper_than_the_fast_path_still_matches() {
        let mut value = json!({"leaf": [1, 2]});
        for i in 0..MAX_FAST_DEPTH + 5 {
            value = if i % 2 == 0 {
                json!([value, 3])
            } else {
                json!({"k": value, "l": {}})
            };
        }
        let (ours, theirs) = both(&value);
        assert_eq!(ours, theirs);
    }
}
