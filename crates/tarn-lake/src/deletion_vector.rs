//! Deletion vectors: the format-v3 position deletes other engines (Spark with Iceberg 1.8+,
//! Trino, ...) write as `deletion-vector-v1` blobs in Puffin files.
//!
//! A deletion vector is a bitmap of the deleted row positions of one data file. The manifest
//! entry of a vector is a position-delete entry whose file format is `PUFFIN`, with
//! `referenced_data_file` (the data file it applies to), `content_offset` and
//! `content_size_in_bytes` (where its blob lies in the Puffin file). The blob, as the Puffin
//! spec defines it: the length of magic + vector (4 bytes, big-endian), the magic `D1 D3 39 64`,
//! the vector as a "portable" 64-bit Roaring bitmap, and a CRC-32 of magic + vector (4 bytes,
//! big-endian). Blobs are never compressed.
//!
//! [`DeletionVectors::of_snapshot`] finds the live vectors of a snapshot (at most one per data
//! file: a writer that deletes more rows of a file replaces its vector with a merged one) and
//! [`DeletionVector::read`] reads and checks one.
//!
//! Why our own: the `iceberg` crate (0.10.1) parses these manifest entries and has a Puffin
//! reader, but its scan reader does not apply deletion vectors (it reads every position delete
//! file as Parquet, and fails on a Puffin file with "Corrupt footer"), and it has no decoder for
//! the blob. tarn's scan of a format-v3 table (`tarn-query`) reads the vectors here and hands
//! them to the `iceberg` reader as the position-delete file it does apply
//! ([`DeletionVector::write_position_delete_file`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::io::FileIO;
use iceberg::spec::{DataContentType, DataFileFormat, ManifestContentType, ManifestList, TableMetadata};
use parquet::arrow::ArrowWriter;
use roaring::RoaringTreemap;
use tarn_core::{Error, ErrorKind, Result};

use crate::deletes::position_delete_schema;
use crate::lake::iceberg_error;

/// The magic bytes that open a `deletion-vector-v1` blob.
const MAGIC: [u8; 4] = [0xD1, 0xD3, 0x39, 0x64];

/// Where one deletion vector lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletionVector {
    /// The Puffin file holding the vector.
    pub puffin_path: String,
    /// The data file whose rows it deletes.
    pub data_file: String,
    /// The blob's offset in the Puffin file.
    pub offset: u64,
    /// The blob's length.
    pub length: u64,
    /// The number of deleted rows, from the manifest.
    pub cardinality: u64,
}

/// The live deletion vectors of one snapshot.
#[derive(Debug, Clone, Default)]
pub struct DeletionVectors {
    by_data_file: HashMap<String, DeletionVector>,
    puffin_files: HashSet<String>,
}

impl DeletionVectors {
    /// The deletion vectors of snapshot `snapshot_id` (the current one when `None`) of a table
    /// with `metadata`, read from its delete manifests.
    pub async fn of_snapshot(
        file_io: &FileIO,
        metadata: &TableMetadata,
        snapshot_id: Option<i64>,
    ) -> Result<Self> {
        let mut out = Self::default();
        let snapshot = match snapshot_id {
            Some(id) => metadata.snapshot_by_id(id),
            None => metadata.current_snapshot(),
        };
        let Some(snapshot) = snapshot else {
            return Ok(out);
        };
        let ice = |e| {
            iceberg_error(
                format!("cannot read the delete manifests of {}", metadata.location()),
                e,
            )
        };
        let bytes = file_io
            .new_input(snapshot.manifest_list())
            .map_err(ice)?
            .read()
            .await
            .map_err(ice)?;
        let list = ManifestList::parse_with_version(&bytes, metadata.format_version()).map_err(ice)?;
        for manifest in list.entries() {
            if manifest.content != ManifestContentType::Deletes {
                continue;
            }
            for entry in manifest.load_manifest(file_io).await.map_err(ice)?.entries() {
                let file = entry.data_file();
                if !entry.is_alive()
                    || file.content_type() != DataContentType::PositionDeletes
                    || file.file_format() != DataFileFormat::Puffin
                {
                    continue;
                }
                let invalid = |what: &str| {
                    Error::new(
                        ErrorKind::InvalidInput,
                        format!(
                            "deletion vector in {} of table at {} has no {what}",
                            file.file_path(),
                            metadata.location()
                        ),
                    )
                };
                let data_file = file
                    .referenced_data_file()
                    .ok_or_else(|| invalid("referenced_data_file"))?;
                let offset = file.content_offset().ok_or_else(|| invalid("content_offset"))?;
                let length = file
                    .content_size_in_bytes()
                    .ok_or_else(|| invalid("content_size_in_bytes"))?;
                out.puffin_files.insert(file.file_path().to_string());
                let vector = DeletionVector {
                    puffin_path: file.file_path().to_string(),
                    data_file: data_file.clone(),
                    offset: u64::try_from(offset).map_err(|_| invalid("valid content_offset"))?,
                    length: u64::try_from(length).map_err(|_| invalid("valid content_size_in_bytes"))?,
                    cardinality: file.record_count(),
                };
                if let Some(other) = out.by_data_file.insert(data_file.clone(), vector) {
                    return Err(Error::new(
                        ErrorKind::InvalidInput,
                        format!(
                            "data file {data_file} of table at {} has two deletion vectors ({} and {}); \
                             the spec allows one per data file and snapshot",
                            metadata.location(),
                            other.puffin_path,
                            file.file_path()
                        ),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Whether the snapshot has no deletion vectors.
    pub fn is_empty(&self) -> bool {
        self.by_data_file.is_empty()
    }

    /// The vector of `data_file`, if it has one.
    pub fn for_data_file(&self, data_file: &str) -> Option<&DeletionVector> {
        self.by_data_file.get(data_file)
    }

    /// Whether `path` is a Puffin file holding deletion vectors of the snapshot.
    pub fn is_puffin_file(&self, path: &str) -> bool {
        self.puffin_files.contains(path)
    }
}

impl DeletionVector {
    /// Reads the vector's blob and decodes the deleted positions, checking its length, magic,
    /// checksum and cardinality.
    pub async fn read(&self, file_io: &FileIO) -> Result<RoaringTreemap> {
        let ice = |e| {
            iceberg_error(
                format!("cannot read the deletion vector in {}", self.puffin_path),
                e,
            )
        };
        let reader = file_io
            .new_input(&self.puffin_path)
            .map_err(ice)?
            .reader()
            .await
            .map_err(ice)?;
        let blob = reader
            .read(self.offset..self.offset + self.length)
            .await
            .map_err(ice)?;
        let positions = decode_blob(&blob).map_err(|why| {
            Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "invalid deletion vector for {} at offset {} of {}: {why}",
                    self.data_file, self.offset, self.puffin_path
                ),
            )
        })?;
        if positions.len() != self.cardinality {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "deletion vector for {} in {} holds {} positions, its manifest entry says {}",
                    self.data_file,
                    self.puffin_path,
                    positions.len(),
                    self.cardinality
                ),
            ));
        }
        Ok(positions)
    }

    /// Writes `positions` (this vector's, from [`Self::read`]) as an Iceberg position-delete
    /// Parquet file at local path `path`; returns its size.
    pub fn write_position_delete_file(
        &self,
        positions: &RoaringTreemap,
        path: &std::path::Path,
    ) -> Result<u64> {
        let schema = Arc::new(
            schema_to_arrow_schema(&position_delete_schema())
                .map_err(|e| iceberg_error("cannot convert the position delete schema", e))?,
        );
        let rows = usize::try_from(positions.len()).unwrap_or(usize::MAX);
        let paths: ArrayRef = Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
            self.data_file.as_str(),
            rows,
        )));
        let pos: ArrayRef = Arc::new(Int64Array::from_iter_values(
            positions.iter().map(|p| i64::try_from(p).unwrap_or(i64::MAX)),
        ));
        let local = |e: std::io::Error| {
            Error::new(
                ErrorKind::Storage,
                "cannot write a deletion vector as a position delete file",
            )
            .with_context("file", path.display())
            .with_source(e)
        };
        let parquet = |e: parquet::errors::ParquetError| local(std::io::Error::other(e));
        let batch = RecordBatch::try_new(schema.clone(), vec![paths, pos])
            .map_err(|e| parquet(parquet::errors::ParquetError::External(Box::new(e))))?;
        let file = std::fs::File::create(path).map_err(local)?;
        let mut writer = ArrowWriter::try_new(file, schema, None).map_err(parquet)?;
        writer.write(&batch).map_err(parquet)?;
        writer.close().map_err(parquet)?;
        Ok(std::fs::metadata(path).map_err(local)?.len())
    }
}

/// The positions of a `deletion-vector-v1` blob, or what is wrong with it.
pub fn decode_blob(blob: &[u8]) -> std::result::Result<RoaringTreemap, String> {
    if blob.len() < 12 {
        return Err(format!(
            "{} bytes, shorter than the 12 of an empty vector",
            blob.len()
        ));
    }
    let declared = u32::from_be_bytes(blob[0..4].try_into().expect("4 bytes")) as usize;
    if declared + 8 != blob.len() {
        return Err(format!(
            "its length field says {declared} bytes of magic and vector, the blob has {}",
            blob.len() - 8
        ));
    }
    let body = &blob[4..4 + declared];
    if body[..4] != MAGIC {
        return Err(format!("magic {:02X?}, expected {MAGIC:02X?}", &body[..4]));
    }
    let stored = u32::from_be_bytes(blob[4 + declared..].try_into().expect("4 bytes"));
    let computed = crc32fast::hash(body);
    if stored != computed {
        return Err(format!("checksum {stored:08x}, computed {computed:08x}"));
    }
    RoaringTreemap::deserialize_from(&body[4..]).map_err(|e| format!("bad Roaring bitmap: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blob as the Puffin spec lays it out, around `positions` serialized by `roaring`
    /// (the portable format the spec names).
    fn blob(positions: &[u64]) -> Vec<u8> {
        let bitmap: RoaringTreemap = positions.iter().copied().collect();
        let mut body = MAGIC.to_vec();
        bitmap.serialize_into(&mut body).unwrap();
        let mut out = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
        out
    }

    #[test]
    fn decodes_positions_below_and_above_32_bits() {
        let positions = [0, 1, 7, 65_535, 65_536, 1 << 33, (1 << 33) + 5];
        let decoded = decode_blob(&blob(&positions)).unwrap();
        assert_eq!(decoded.iter().collect::<Vec<_>>(), positions);
    }

    /// A vector laid out byte by byte as the Puffin and Roaring format specs describe it (not
    /// produced by `roaring`): positions 1, 2, 3 and 5 in one array container.
    #[test]
    fn decodes_a_vector_laid_out_by_the_spec() {
        // Magic, one 32-bit bitmap (8 bytes LE), its key 0 (4 bytes LE), then the bitmap:
        // cookie 12346 (no run containers), 1 container, its key 0 and cardinality - 1 = 3,
        // its offset (16), its values 1 2 3 5. Length before, CRC after.
        let mut body = MAGIC.to_vec();
        body.extend_from_slice(&1u64.to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        body.extend_from_slice(&12346u32.to_le_bytes());
        body.extend_from_slice(&1u32.to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&3u16.to_le_bytes());
        body.extend_from_slice(&16u32.to_le_bytes());
        for v in [1u16, 2, 3, 5] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        let mut blob = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        blob.extend_from_slice(&body);
        blob.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
        let decoded = decode_blob(&blob).unwrap();
        assert_eq!(decoded.iter().collect::<Vec<_>>(), vec![1, 2, 3, 5]);
    }

    #[test]
    fn rejects_damaged_blobs() {
        let good = blob(&[3, 4]);
        let mut bad_crc = good.clone();
        let last = bad_crc.len() - 1;
        bad_crc[last] ^= 1;
        assert!(decode_blob(&bad_crc).unwrap_err().contains("checksum"));
        let mut bad_magic = good.clone();
        bad_magic[4] = 0;
        assert!(decode_blob(&bad_magic).unwrap_err().contains("magic"));
        assert!(
            decode_blob(&good[..good.len() - 1])
                .unwrap_err()
                .contains("length")
        );
        assert!(decode_blob(&good[..5]).unwrap_err().contains("shorter"));
    }

    #[test]
    fn writes_positions_as_a_position_delete_file() {
        let dir = tempfile::tempdir().unwrap();
        let vector = DeletionVector {
            puffin_path: "file:/w/t/data/x.puffin".into(),
            data_file: "file:/w/t/data/a.parquet".into(),
            offset: 4,
            length: 40,
            cardinality: 3,
        };
        let positions: RoaringTreemap = [2u64, 9, 1 << 32].into_iter().collect();
        let path = dir.path().join("dv.parquet");
        let size = vector.write_position_delete_file(&positions, &path).unwrap();
        assert_eq!(size, std::fs::metadata(&path).unwrap().len());
        let file = std::fs::File::open(&path).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
        let pos = batches[0]
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(pos.values().to_vec(), vec![2, 9, 1 << 32]);
        let paths = batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert!(paths.iter().all(|p| p == Some("file:/w/t/data/a.parquet")));
    }
}
