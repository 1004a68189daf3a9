//! Splits the output of `COPY ... TO STDOUT` (text format) into rows and fields.
//!
//! The initial snapshot of a table reads it with `COPY (SELECT ...) TO STDOUT`: one line per
//! row ending in `\n`, fields separated by a tab, NULL written as `\N`, and backslash escapes
//! for the bytes that would otherwise be ambiguous. A [`CopyTextReader`] takes the chunks the
//! client yields, in order, and calls back with each row's fields with the escapes decoded;
//! the field values are then in the type's text output format, ready for
//! [`crate::value::builder::ColumnBuilder::append`].
//!
//! Contract:
//!
//! - Chunks may end anywhere: usually a chunk holds whole rows, and a row split across chunks
//!   is carried over (copied once) until its end arrives. [`CopyTextReader::finish`] reports a
//!   row left incomplete.
//! - Only the default text format is read: delimiter tab, NULL `\N`, lines ending in `\n`
//!   (a `\r` before it is dropped; COPY escapes a `\r` in data as `\r`). A field is NULL only
//!   when it is exactly `\N`; escapes decode as in `COPY FROM`: `\\`, `\b`, `\f`, `\n`, `\r`,
//!   `\t`, `\v`, `\` + 1 to 3 octal digits, `\x` + 1 or 2 hex digits, and `\` + any other byte
//!   is that byte. The protocol's COPY OUT has no `\.` end marker, so a line `\.` is data.
//! - Fields without escapes are slices of the chunk (zero-copy); decoded fields live in a
//!   buffer reused across rows.
//! - A row whose field count differs from the expected column count, or a line ending in a
//!   lone backslash, is an [`ErrorKind::InvalidInput`] error naming the line number (counted
//!   from 1 over all chunks). An error returned by the row callback stops the push and is
//!   passed through.
//!
//! Why our own: `tokio-postgres` streams COPY OUT data as raw bytes and leaves the text format
//! to the caller, and the `csv` readers do not know COPY's escapes or its NULL marker.

use tarn_core::{Error, ErrorKind, Result};

/// Reads COPY text-format rows from a sequence of chunks; see the module doc.
#[derive(Debug)]
pub struct CopyTextReader {
    columns: usize,
    /// Lines completed so far.
    lines: u64,
    /// The incomplete last line of the previous chunks.
    partial: Vec<u8>,
    /// Decoded bytes of the fields of the current row that had escapes.
    decoded: Vec<u8>,
    spans: Vec<Span>,
    /// Recycled allocation for the field slices handed to the callback.
    fields: Vec<Option<&'static [u8]>>,
}

/// Where one field of the current row is.
#[derive(Debug, Clone, Copy)]
enum Span {
    Null,
    Line(usize, usize),
    Decoded(usize, usize),
}

/// An empty vector of field slices with `v`'s allocation, for another lifetime.
fn recycle<'b>(mut v: Vec<Option<&[u8]>>) -> Vec<Option<&'b [u8]>> {
    v.clear();
    v.into_iter().map(|_| None).collect()
}

impl CopyTextReader {
    /// A reader for rows of `columns` fields.
    pub fn new(columns: usize) -> Self {
        Self {
            columns,
            lines: 0,
            partial: Vec::new(),
            decoded: Vec::new(),
            spans: Vec::with_capacity(columns),
            fields: Vec::with_capacity(columns),
        }
    }

    /// The number of rows read so far.
    pub fn rows(&self) -> u64 {
        self.lines
    }

    /// Reads the rows completed by `chunk`, calling `row` with the fields of each (`None` is
    /// NULL). Bytes after the last line end are kept for the next chunk.
    pub fn push(&mut self, chunk: &[u8], mut row: impl FnMut(&[Option<&[u8]>]) -> Result<()>) -> Result<()> {
        let mut rest = chunk;
        if !self.partial.is_empty() {
            let Some(end) = rest.iter().position(|&b| b == b'\n') else {
                self.partial.extend_from_slice(rest);
                return Ok(());
            };
            self.partial.extend_from_slice(&rest[..end]);
            rest = &rest[end + 1..];
            let mut line = std::mem::take(&mut self.partial);
            let result = self.line(&line, &mut row);
            line.clear();
            self.partial = line;
            result?;
        }
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            self.line(&rest[..end], &mut row)?;
            rest = &rest[end + 1..];
        }
        self.partial.extend_from_slice(rest);
        Ok(())
    }

    /// Checks that the data ended with a complete row.
    pub fn finish(self) -> Result<()> {
        if self.partial.is_empty() {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "COPY data ends inside line {}: {} bytes after the last line end",
                    self.lines + 1,
                    self.partial.len()
                ),
            ))
        }
    }

    fn line(&mut self, line: &[u8], row: &mut impl FnMut(&[Option<&[u8]>]) -> Result<()>) -> Result<()> {
        self.lines += 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        self.spans.clear();
        self.decoded.clear();
        if !(self.columns == 0 && line.is_empty()) {
            split_line(line, &mut self.spans, &mut self.decoded).map_err(|reason| {
                Error::new(
                    ErrorKind::InvalidInput,
                    format!("COPY data line {}: {reason}", self.lines),
                )
            })?;
        }
        if self.spans.len() != self.columns {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "COPY data line {} has {} fields, expected {}",
                    self.lines,
                    self.spans.len(),
                    self.columns
                ),
            ));
        }
        let mut fields = recycle(std::mem::take(&mut self.fields));
        fields.extend(self.spans.iter().map(|span| match *span {
            Span::Null => None,
            Span::Line(start, end) => Some(&line[start..end]),
            Span::Decoded(start, end) => Some(&self.decoded[start..end]),
        }));
        let result = row(&fields);
        self.fields = recycle(fields);
        result
    }
}

/// Splits one line (without its line end) into field spans, decoding escaped fields into
/// `decoded`.
fn split_line(line: &[u8], spans: &mut Vec<Span>, decoded: &mut Vec<u8>) -> Result<(), &'static str> {
    let mut start = 0;
    loop {
        let mut i = start;
        let mut escaped = false;
        while i < line.len() {
            match line[i] {
                b'\t' => break,
                b'\\' => {
                    if i + 1 == line.len() {
                        return Err("the line ends in a lone backslash");
                    }
                    escaped = true;
                    i += 2;
                }
                _ => i += 1,
            }
        }
        let raw = &line[start..i];
        spans.push(if raw == b"\\N" {
            Span::Null
        } else if escaped {
            let from = decoded.len();
            decode_escapes(raw, decoded);
            Span::Decoded(from, decoded.len())
        } else {
            Span::Line(start, i)
        });
        if i >= line.len() {
            return Ok(());
        }
        start = i + 1;
    }
}

/// Appends `raw` with COPY's backslash escapes decoded to `out`. `raw` never ends in a lone
/// backslash (the splitter checks).
fn decode_escapes(raw: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let Some(&e) = raw.get(i + 1) else {
            out.push(c);
            return;
        };
        i += 2;
        match e {
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(0x0b),
            b'0'..=b'7' => {
                let mut value = u32::from(e - b'0');
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            value = value * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push((value & 0xff) as u8);
            }
            b'x' => match raw.get(i).and_then(|&d| hex_value(d)) {
                Some(high) => {
                    i += 1;
                    let mut value = high;
                    if let Some(low) = raw.get(i).and_then(|&d| hex_value(d)) {
                        value = value * 16 + low;
                        i += 1;
                    }
                    out.push(value);
                }
                None => out.push(b'x'),
            },
            other => out.push(other),
        }
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every row of `chunks` as owned fields.
    fn read(columns: usize, chunks: &[&[u8]]) -> Result<Vec<Vec<Option<Vec<u8>>>>> {
        let mut reader = CopyTextReader::new(columns);
        let mut rows = Vec::new();
        for chunk in chunks {
            reader.push(chunk, |fields| {
                rows.push(fields.iter().map(|f| f.map(<[u8]>::to_vec)).collect());
                Ok(())
            })?;
        }
        reader.finish()?;
        Ok(rows)
    }

    fn field(s: &str) -> Option<Vec<u8>> {
        Some(s.as_bytes().to_vec())
    }

    /// Escapes a value the way `COPY TO` text format does (CopyAttributeOutText).
    fn escape(value: Option<&[u8]>, out: &mut Vec<u8>) {
        let Some(value) = value else {
            out.extend_from_slice(b"\\N");
            return;
        };
        for &c in value {
            match c {
                b'\\' => out.extend_from_slice(b"\\\\"),
                0x08 => out.extend_from_slice(b"\\b"),
                0x0c => out.extend_from_slice(b"\\f"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0x0b => out.extend_from_slice(b"\\v"),
                c => out.push(c),
            }
        }
    }

    #[test]
    fn rows_fields_nulls_and_empty_strings() {
        let rows = read(3, &[b"1\thello\t\\N\n2\t\t\n"]).unwrap();
        assert_eq!(
            rows,
            vec![
                vec![field("1"), field("hello"), None],
                vec![field("2"), field(""), field("")],
            ]
        );
    }

    #[test]
    fn escapes() {
        let rows = read(
            1,
            &[b"a\\\\b\\tc\\nd\\re\\bf\\fg\\vh\n\\N\\N\n\\\\N\n\\101\\x41\\x4a\\7\\0101\\xg\\q\\.\n"],
        )
        .unwrap();
        assert_eq!(
            rows,
            vec![
                vec![Some(b"a\\b\tc\nd\re\x08f\x0cg\x0bh".to_vec())],
                vec![field("NN")],
                vec![field("\\N")],
                vec![Some(b"AAJ\x07\x081xgq.".to_vec())],
            ]
        );
    }

    #[test]
    fn escaped_tab_stays_in_the_field() {
        // COPY writes a tab in data as \t; a backslash before a raw tab keeps it too.
        let rows = read(2, &[b"a\\\tb\tc\n"]).unwrap();
        assert_eq!(rows, vec![vec![field("a\tb"), field("c")]]);
    }

    #[test]
    fn unescaped_fields_are_slices_of_the_chunk() {
        let chunk = b"plain\tesc\\n\n";
        let range = chunk.as_ptr_range();
        let mut reader = CopyTextReader::new(2);
        reader
            .push(chunk, |fields| {
                assert!(range.contains(&fields[0].unwrap().as_ptr()));
                assert_eq!(fields[1], Some(&b"esc\n"[..]));
                Ok(())
            })
            .unwrap();
        assert_eq!(reader.rows(), 1);
        reader.finish().unwrap();
    }

    #[test]
    fn rows_split_across_chunks() {
        let rows = read(2, &[b"1\tab", b"c\n2", b"\t", b"x\\", b"ny\n3\t\\N\n", b""]).unwrap();
        assert_eq!(
            rows,
            vec![
                vec![field("1"), field("abc")],
                vec![field("2"), field("x\ny")],
                vec![field("3"), None],
            ]
        );
    }

    #[test]
    fn carriage_return_before_line_end_is_dropped() {
        let rows = read(2, &[b"a\tb\r\n"]).unwrap();
        assert_eq!(rows, vec![vec![field("a"), field("b")]]);
    }

    #[test]
    fn zero_columns() {
        let rows = read(0, &[b"\n\n"]).unwrap();
        assert_eq!(rows, vec![Vec::<Option<Vec<u8>>>::new(), Vec::new()]);
    }

    #[test]
    fn wrong_field_count_names_the_line() {
        let err = read(2, &[b"1\ta\n", b"2\n"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert_eq!(err.message(), "COPY data line 2 has 1 fields, expected 2");
        let err = read(2, &[b"1\ta\tb\n"]).unwrap_err();
        assert_eq!(err.message(), "COPY data line 1 has 3 fields, expected 2");
    }

    #[test]
    fn lone_backslash_and_incomplete_row() {
        let err = read(1, &[b"ok\nbad\\\n"]).unwrap_err();
        assert_eq!(
            err.message(),
            "COPY data line 2: the line ends in a lone backslash"
        );
        let err = read(1, &[b"ok\npart"]).unwrap_err();
        assert_eq!(
            err.message(),
            "COPY data ends inside line 2: 4 bytes after the last line end"
        );
    }

    #[test]
    fn callback_errors_pass_through() {
        let mut reader = CopyTextReader::new(1);
        let err = reader
            .push(b"a\nb\n", |fields| {
                if fields[0] == Some(&b"b"[..]) {
                    Err(Error::new(ErrorKind::Internal, "stop"))
                } else {
                    Ok(())
                }
            })
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Internal);
        assert_eq!(reader.rows(), 2);
    }

    proptest! {
        #[test]
        fn escaped_values_read_back(
            rows in proptest::collection::vec(
                proptest::collection::vec(
                    proptest::option::of(proptest::collection::vec(any::<u8>(), 0..12)), 3),
                0..20),
            split in any::<proptest::sample::Index>(),
        ) {
            let mut data = Vec::new();
            for row in &rows {
                for (i, value) in row.iter().enumerate() {
                    if i > 0 {
                        data.push(b'\t');
                    }
                    escape(value.as_deref(), &mut data);
                }
                data.push(b'\n');
            }
            let at = if data.is_empty() { 0 } else { split.index(data.len()) };
            let (a, b) = data.split_at(at);
            let read = read(3, &[a, b]).unwrap();
            prop_assert_eq!(read, rows);
        }

        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut reader = CopyTextReader::new(2);
            let _ = reader.push(&data, |_| Ok(()));
            let _ = reader.finish();
        }
    }
}
