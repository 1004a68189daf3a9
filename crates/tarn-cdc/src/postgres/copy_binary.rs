//! Splits the output of `COPY ... TO STDOUT (FORMAT binary)` into rows and fields.
//!
//! The initial snapshot reads a table in binary when every column has a binary reader
//! ([`crate::value::binary::BinaryFormat::of`]): PostgreSQL formats no text and tarn parses
//! none. The stream is an 11-byte signature (`PGCOPY\n\377\r\n\0`), a 32-bit flags field, a
//! header extension (32-bit length, then that many bytes), tuples — a 16-bit field count,
//! then per field a 32-bit length (-1 for NULL) and that many bytes — and a trailer (a field
//! count of -1). Integers are big-endian. A [`CopyBinaryReader`] takes the chunks the client
//! yields, in order, and calls back with each row's fields, for
//! [`crate::value::builder::BatchBuilder::append_binary`].
//!
//! Contract:
//!
//! - Chunks may end anywhere (PostgreSQL sends one message per row, so usually a chunk is one
//!   row); a row split across chunks is carried over until its end arrives. Fields are slices
//!   of the chunk, or of the carried bytes.
//! - [`CopyBinaryReader::finish`] checks that the data ended with the trailer: a stream cut
//!   short is an error, never a silently shorter table.
//! - A wrong signature, flags asking for OIDs, a row whose field count differs from the
//!   expected column count, a negative length other than -1, or bytes after the trailer is an
//!   [`ErrorKind::InvalidInput`] error naming the row (counted from 1 over all chunks). An
//!   error returned by the row callback stops the push and is passed through.

use tarn_core::{Error, ErrorKind, Result};

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// Reads COPY binary-format rows from a sequence of chunks; see the module doc.
#[derive(Debug)]
pub struct CopyBinaryReader {
    columns: usize,
    rows: u64,
    header_read: bool,
    ended: bool,
    /// Bytes of an incomplete header or row from the previous chunks.
    carry: Vec<u8>,
    /// Recycled allocation for the field slices handed to the callback.
    fields: Vec<Option<&'static [u8]>>,
}

/// An empty vector of field slices with `v`'s allocation, for another lifetime.
fn recycle<'b>(mut v: Vec<Option<&[u8]>>) -> Vec<Option<&'b [u8]>> {
    v.clear();
    v.into_iter().map(|_| None).collect()
}

fn invalid(message: String) -> Error {
    Error::new(ErrorKind::InvalidInput, message)
}

impl CopyBinaryReader {
    /// A reader for rows of `columns` fields.
    pub fn new(columns: usize) -> Self {
        Self {
            columns,
            rows: 0,
            header_read: false,
            ended: false,
            carry: Vec::new(),
            fields: Vec::with_capacity(columns),
        }
    }

    /// The number of rows read so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Reads the rows completed by `chunk`, calling `row` with the fields of each (`None` is
    /// NULL). Bytes of an incomplete row are kept for the next chunk.
    pub fn push(&mut self, chunk: &[u8], mut row: impl FnMut(&[Option<&[u8]>]) -> Result<()>) -> Result<()> {
        if self.carry.is_empty() {
            let used = self.read(chunk, &mut row)?;
            self.carry.extend_from_slice(&chunk[used..]);
            return Ok(());
        }
        let mut carry = std::mem::take(&mut self.carry);
        carry.extend_from_slice(chunk);
        let result = self.read(&carry, &mut row);
        if let Ok(used) = result {
            carry.drain(..used);
        }
        self.carry = carry;
        result.map(|_| ())
    }

    /// Checks that the data ended with the trailer, after complete rows.
    pub fn finish(self) -> Result<()> {
        if !self.carry.is_empty() {
            return Err(invalid(format!(
                "COPY data ends inside row {}: {} bytes after the last complete row",
                self.rows + 1,
                self.carry.len()
            )));
        }
        if !self.ended {
            return Err(invalid(format!(
                "COPY data ends after {} rows without the binary format's trailer",
                self.rows
            )));
        }
        Ok(())
    }

    /// Reads the header and the complete rows at the start of `data`; returns the bytes used.
    fn read(&mut self, data: &[u8], row: &mut impl FnMut(&[Option<&[u8]>]) -> Result<()>) -> Result<usize> {
        let mut at = 0;
        if !self.header_read {
            let Some(header) = header_len(data)? else {
                return Ok(0);
            };
            self.header_read = true;
            at = header;
        }
        while at < data.len() {
            if self.ended {
                return Err(invalid(format!(
                    "COPY data has {} bytes after the binary format's trailer",
                    data.len() - at
                )));
            }
            let Some(count) = data.get(at..at + 2) else {
                return Ok(at);
            };
            let count = i16::from_be_bytes([count[0], count[1]]);
            if count == -1 {
                self.ended = true;
                at += 2;
                continue;
            }
            if usize::try_from(count).ok() != Some(self.columns) {
                return Err(invalid(format!(
                    "COPY data row {} has {count} fields, expected {}",
                    self.rows + 1,
                    self.columns
                )));
            }
            let mut fields = recycle(std::mem::take(&mut self.fields));
            let mut end = at + 2;
            let mut complete = true;
            for _ in 0..self.columns {
                let Some(len) = data.get(end..end + 4) else {
                    complete = false;
                    break;
                };
                let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
                end += 4;
                if len == -1 {
                    fields.push(None);
                    continue;
                }
                let Ok(len) = usize::try_from(len) else {
                    self.fields = recycle(fields);
                    return Err(invalid(format!(
                        "COPY data row {} has a field of length {len}",
                        self.rows + 1
                    )));
                };
                let Some(value) = data.get(end..end + len) else {
                    complete = false;
                    break;
                };
                fields.push(Some(value));
                end += len;
            }
            if !complete {
                self.fields = recycle(fields);
                return Ok(at);
            }
            self.rows += 1;
            let result = row(&fields);
            self.fields = recycle(fields);
            result?;
            at = end;
        }
        Ok(at)
    }
}

/// The length of the header at the start of `data`, `None` if it is not complete yet.
fn header_len(data: &[u8]) -> Result<Option<usize>> {
    let fixed = SIGNATURE.len() + 8;
    if data.len() < SIGNATURE.len() {
        if !SIGNATURE.starts_with(data) {
            return Err(invalid(
                "COPY data does not start with the binary format's signature".into(),
            ));
        }
        return Ok(None);
    }
    if &data[..SIGNATURE.len()] != SIGNATURE {
        return Err(invalid(
            "COPY data does not start with the binary format's signature".into(),
        ));
    }
    if data.len() < fixed {
        return Ok(None);
    }
    let word = |i: usize| u32::from_be_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
    let flags = word(SIGNATURE.len());
    if flags & (1 << 16) != 0 {
        return Err(invalid(
            "COPY data includes OIDs, which tarn does not ask for".into(),
        ));
    }
    let extension = word(SIGNATURE.len() + 4) as usize;
    if data.len() < fixed + extension {
        return Ok(None);
    }
    Ok(Some(fixed + extension))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header() -> Vec<u8> {
        let mut v = SIGNATURE.to_vec();
        v.extend_from_slice(&0u32.to_be_bytes());
        v.extend_from_slice(&0u32.to_be_bytes());
        v
    }

    fn encode(rows: &[Vec<Option<Vec<u8>>>], columns: usize) -> Vec<u8> {
        let mut v = header();
        for row in rows {
            v.extend_from_slice(&(columns as i16).to_be_bytes());
            for field in row {
                match field {
                    None => v.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(f) => {
                        v.extend_from_slice(&(f.len() as i32).to_be_bytes());
                        v.extend_from_slice(f);
                    }
                }
            }
        }
        v.extend_from_slice(&(-1i16).to_be_bytes());
        v
    }

    type Rows = Vec<Vec<Option<Vec<u8>>>>;

    fn read(columns: usize, chunks: &[&[u8]]) -> Result<Rows> {
        let mut reader = CopyBinaryReader::new(columns);
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

    #[test]
    fn rows_nulls_and_empty_values() {
        let rows = vec![
            vec![Some(b"\x00\x01".to_vec()), None, Some(Vec::new())],
            vec![None, Some(b"abc".to_vec()), None],
        ];
        let data = encode(&rows, 3);
        assert_eq!(read(3, &[&data]).unwrap(), rows);
        // One chunk per byte.
        let bytes: Vec<&[u8]> = data.chunks(1).collect();
        assert_eq!(read(3, &bytes).unwrap(), rows);
    }

    #[test]
    fn cut_short_wrong_counts_and_bad_headers_are_errors() {
        let rows = vec![vec![Some(b"x".to_vec())]];
        let data = encode(&rows, 1);
        let err = read(1, &[&data[..data.len() - 2]]).unwrap_err();
        assert_eq!(
            err.message(),
            "COPY data ends after 1 rows without the binary format's trailer"
        );
        let err = read(1, &[&data[..data.len() - 3]]).unwrap_err();
        assert_eq!(
            err.message(),
            "COPY data ends inside row 1: 6 bytes after the last complete row"
        );
        let err = read(2, &[&data]).unwrap_err();
        assert_eq!(err.message(), "COPY data row 1 has 1 fields, expected 2");
        let err = read(1, &[b"PGCOPX\n\xff\r\n\0"]).unwrap_err();
        assert!(err.message().contains("signature"));
        let mut after = data.clone();
        after.extend_from_slice(b"\0\x01");
        let err = read(1, &[&after]).unwrap_err();
        assert!(err.message().contains("after the binary format's trailer"));
        let mut oids = header();
        oids[11..15].copy_from_slice(&(1u32 << 16).to_be_bytes());
        assert!(read(1, &[&oids]).unwrap_err().message().contains("OIDs"));
        let mut negative = header();
        negative.extend_from_slice(&1i16.to_be_bytes());
        negative.extend_from_slice(&(-2i32).to_be_bytes());
        assert_eq!(
            read(1, &[&negative]).unwrap_err().message(),
            "COPY data row 1 has a field of length -2"
        );
    }

    #[test]
    fn header_extension_is_skipped() {
        let mut data = SIGNATURE.to_vec();
        data.extend_from_slice(&0u32.to_be_bytes());
        data.extend_from_slice(&3u32.to_be_bytes());
        data.extend_from_slice(b"ext");
        data.extend_from_slice(&1i16.to_be_bytes());
        data.extend_from_slice(&1i32.to_be_bytes());
        data.push(7);
        data.extend_from_slice(&(-1i16).to_be_bytes());
        assert_eq!(
            read(1, &[&data[..5], &data[5..20], &data[20..]]).unwrap(),
            vec![vec![Some(vec![7])]]
        );
    }

    #[test]
    fn callback_errors_pass_through() {
        let data = encode(&[vec![Some(b"a".to_vec())], vec![Some(b"b".to_vec())]], 1);
        let mut reader = CopyBinaryReader::new(1);
        let err = reader
            .push(&data, |fields| {
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
        fn rows_read_back_at_any_split(
            rows in proptest::collection::vec(
                proptest::collection::vec(
                    proptest::option::of(proptest::collection::vec(any::<u8>(), 0..12)), 3),
                0..20),
            split in any::<proptest::sample::Index>(),
        ) {
            let data = encode(&rows, 3);
            let at = split.index(data.len());
            let (a, b) = data.split_at(at);
            prop_assert_eq!(read(3, &[a, b]).unwrap(), rows);
        }

        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut input = header();
            input.extend_from_slice(&data);
            let mut reader = CopyBinaryReader::new(2);
            let _ = reader.push(&input, |_| Ok(()));
            let _ = reader.finish();
        }
    }
}
