//! The primary-key index of a CDC table: key → data file and row position of the live row.
//!
//! It lets the writer turn an update or delete into a **position delete** (which every Iceberg
//! reader applies cheaply, and pyiceberg requires) instead of an equality delete. It is a
//! cache, never a source of truth: it is rebuilt from the table itself (the key columns of
//! every live row) when the writer starts, and after anything else rewrote the table.
//!
//! Keys are kept compact: a single integer key column is stored as an `i64`; any other key is
//! reduced to a 128-bit hash of its Arrow row encoding (two independently keyed SipHash
//! values; a collision among 10⁹ keys has a probability below 10⁻²⁰). Tables without a key
//! (`REPLICA IDENTITY FULL`) use the whole row as key and keep every location of identical
//! rows. About 30–40 bytes per row.
//!
//! A unique key can still be in the table twice: another writer (an `INSERT`, an `UPDATE` or
//! `MERGE` through tarn, another engine) may add a row with a key the pipeline holds. A rebuild
//! keeps every location of such a key ([`KeyIndex::insert_found`]): the last one found as the
//! key's row, the others as *spares* ([`KeyIndex::take_spares`]), which the key's next change
//! deletes with it — so the source's next change leaves the key once.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Int16Type, Int32Type, Int64Type, SchemaRef};
use arrow::row::{RowConverter, SortField};
use tarn_core::{Error, ErrorKind, Result};

/// Where a live row is: a data file (by index into [`KeyIndex::files`]) and its position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowLocation {
    /// The data file's number in this index.
    pub file: u32,
    /// The row's position in the file.
    pub pos: u32,
}

/// An index key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IndexKey {
    /// A single integer key column.
    Int(i64),
    /// A hash of any other key.
    Hash(u128),
}

/// Unique keys live in one of two compact maps (16 bytes per entry for integer keys, 24 for
/// hashes: a `u128` key would be aligned to 16 and cost 32), so an index of tens of millions
/// of rows stays within a few hundred MiB.
#[derive(Debug)]
enum Entries {
    Unique {
        ints: Map<i64, RowLocation>,
        hashes: Map<[u64; 2], RowLocation>,
    },
    Multi(Map<IndexKey, Vec<RowLocation>>),
}

/// The maps' hasher: foldhash (randomly seeded) instead of SipHash, which cost about as much
/// per key as the rest of an insert while a snapshot copy fills the index with every row.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

fn split(hash: u128) -> [u64; 2] {
    [(hash >> 64) as u64, hash as u64]
}

/// Makes [`IndexKey`]s out of key columns.
#[derive(Debug)]
pub struct KeyEncoder {
    fields: Vec<DataType>,
    int: bool,
    hashers: (RandomState, RandomState),
}

impl KeyEncoder {
    /// An encoder for key columns of these (Arrow) types.
    pub fn new(fields: Vec<DataType>) -> Self {
        let int =
            fields.len() == 1 && matches!(fields[0], DataType::Int16 | DataType::Int32 | DataType::Int64);
        Self {
            fields,
            int,
            hashers: (RandomState::new(), RandomState::new()),
        }
    }

    /// The keys of every row of `columns` (the key columns, in key order).
    pub fn encode(&self, columns: &[ArrayRef]) -> Result<Vec<IndexKey>> {
        if columns.len() != self.fields.len() {
            return Err(Error::new(
                ErrorKind::Internal,
                format!("key has {} columns, got {}", self.fields.len(), columns.len()),
            ));
        }
        let rows = columns.first().map_or(0, |c| c.len());
        if self.int {
            let c = &columns[0];
            let mut keys = Vec::with_capacity(rows);
            match c.data_type() {
                DataType::Int64 => keys.extend(
                    c.as_primitive::<Int64Type>()
                        .iter()
                        .map(|v| IndexKey::Int(v.unwrap_or(i64::MIN))),
                ),
                DataType::Int32 => keys.extend(
                    c.as_primitive::<Int32Type>()
                        .iter()
                        .map(|v| IndexKey::Int(v.map_or(i64::MIN, i64::from))),
                ),
                DataType::Int16 => keys.extend(
                    c.as_primitive::<Int16Type>()
                        .iter()
                        .map(|v| IndexKey::Int(v.map_or(i64::MIN, i64::from))),
                ),
                other => {
                    return Err(Error::new(
                        ErrorKind::Internal,
                        format!("integer key column has type {other}"),
                    ));
                }
            }
            return Ok(keys);
        }
        // Canonical types, so keys from the stream and keys read back from Parquet agree.
        let mut canonical = Vec::with_capacity(columns.len());
        for (c, t) in columns.iter().zip(&self.fields) {
            let c = if c.data_type() == t {
                c.clone()
            } else {
                arrow::compute::cast(c, t).map_err(|e| {
                    Error::new(
                        ErrorKind::Internal,
                        format!("cannot cast a key column to {t}: {e}"),
                    )
                })?
            };
            canonical.push(c);
        }
        let converter = RowConverter::new(self.fields.iter().map(|t| SortField::new(t.clone())).collect())
            .map_err(|e| Error::new(ErrorKind::Internal, format!("cannot encode keys: {e}")))?;
        let encoded = converter
            .convert_columns(&canonical)
            .map_err(|e| Error::new(ErrorKind::Internal, format!("cannot encode keys: {e}")))?;
        Ok(encoded
            .iter()
            .map(|row| {
                let bytes = row.as_ref();
                let mut a = self.hashers.0.build_hasher();
                a.write(bytes);
                let mut b = self.hashers.1.build_hasher();
                b.write(bytes);
                IndexKey::Hash((u128::from(a.finish()) << 64) | u128::from(b.finish()))
            })
            .collect())
    }

    /// The canonical Arrow types of the key columns.
    pub fn fields(&self) -> &[DataType] {
        &self.fields
    }
}

/// Key → row location for one table; see the module doc.
#[derive(Debug)]
pub struct KeyIndex {
    files: Vec<Arc<str>>,
    file_numbers: HashMap<Arc<str>, u32>,
    entries: Entries,
    /// More live rows of unique keys, found by a rebuild (another writer gave the key twice).
    spares: Map<IndexKey, Vec<RowLocation>>,
}

impl KeyIndex {
    /// An empty index for the rows of `spec` (several rows per key when the key is the whole
    /// row).
    pub fn for_table(spec: &crate::source::TableSpec) -> Self {
        Self::new(spec.key_kind == crate::source::KeyKind::FullRow)
    }

    /// An empty index; `multi` for tables whose key is the whole row.
    pub fn new(multi: bool) -> Self {
        Self {
            files: Vec::new(),
            file_numbers: HashMap::new(),
            spares: Map::default(),
            entries: if multi {
                Entries::Multi(Map::default())
            } else {
                Entries::Unique {
                    ints: Map::default(),
                    hashes: Map::default(),
                }
            },
        }
    }

    /// Live keys.
    pub fn len(&self) -> usize {
        match &self.entries {
            Entries::Unique { ints, hashes } => ints.len() + hashes.len(),
            Entries::Multi(m) => m.values().map(Vec::len).sum(),
        }
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets everything (after a truncate).
    pub fn clear(&mut self) {
        let multi = matches!(self.entries, Entries::Multi(_));
        *self = Self::new(multi);
    }

    /// The number of data file `path`, registering it.
    pub fn file_number(&mut self, path: &Arc<str>) -> u32 {
        if let Some(n) = self.file_numbers.get(path) {
            return *n;
        }
        let n = self.files.len() as u32;
        self.files.push(path.clone());
        self.file_numbers.insert(path.clone(), n);
        n
    }

    /// The path of data file number `n`.
    pub fn file_path(&self, n: u32) -> &Arc<str> {
        &self.files[n as usize]
    }

    /// Records that the rows with `keys` live in data file number `file` at consecutive
    /// positions from `first_pos` (a batch as one writer wrote it).
    pub fn insert_run(&mut self, keys: &[IndexKey], file: u32, first_pos: u32) {
        for (i, key) in keys.iter().enumerate() {
            self.insert(
                *key,
                RowLocation {
                    file,
                    pos: first_pos + i as u32,
                },
            );
        }
    }

    /// Records that the row with `key` lives at `location`.
    pub fn insert(&mut self, key: IndexKey, location: RowLocation) {
        match &mut self.entries {
            Entries::Unique { ints, hashes } => {
                match key {
                    IndexKey::Int(k) => ints.insert(k, location),
                    IndexKey::Hash(h) => hashes.insert(split(h), location),
                };
            }
            Entries::Multi(m) => m.entry(key).or_default().push(location),
        }
    }

    /// Records a live row with `key` at `location` found in the table (a rebuild): for a unique
    /// key the index already holds, the row found last becomes the key's row and the other a
    /// spare ([`Self::take_spares`]); whole-row keys keep every location anyway.
    pub fn insert_found(&mut self, key: IndexKey, location: RowLocation) {
        if matches!(self.entries, Entries::Unique { .. })
            && let Some(earlier) = self.get(&key)
            && earlier != location
        {
            self.spares.entry(key).or_default().push(earlier);
        }
        self.insert(key, location);
    }

    /// Takes the spare locations of `key` (more live rows of a unique key, found by a rebuild):
    /// what a change of the key deletes besides its row.
    pub fn take_spares(&mut self, key: &IndexKey) -> Vec<RowLocation> {
        if self.spares.is_empty() {
            return Vec::new();
        }
        self.spares.remove(key).unwrap_or_default()
    }

    /// How many spare locations the index holds (see [`Self::insert_found`]).
    pub fn spares(&self) -> usize {
        self.spares.values().map(Vec::len).sum()
    }

    /// Where the row with `key` lives (one of them, for whole-row keys).
    pub fn get(&self, key: &IndexKey) -> Option<RowLocation> {
        match &self.entries {
            Entries::Unique { ints, hashes } => match key {
                IndexKey::Int(k) => ints.get(k).copied(),
                IndexKey::Hash(h) => hashes.get(&split(*h)).copied(),
            },
            Entries::Multi(m) => m.get(key).and_then(|v| v.last().copied()),
        }
    }

    /// Removes the row with `key` (one of them, for whole-row keys) and returns its location.
    pub fn remove(&mut self, key: &IndexKey) -> Option<RowLocation> {
        match &mut self.entries {
            Entries::Unique { ints, hashes } => match key {
                IndexKey::Int(k) => ints.remove(k),
                IndexKey::Hash(h) => hashes.remove(&split(*h)),
            },
            Entries::Multi(m) => {
                let list = m.get_mut(key)?;
                let location = list.pop();
                if list.is_empty() {
                    m.remove(key);
                }
                location
            }
        }
    }

    /// Drops every entry pointing into the files `paths` (they were rewritten).
    pub fn remove_files(&mut self, paths: &std::collections::HashSet<String>) {
        let numbers: std::collections::HashSet<u32> = paths
            .iter()
            .filter_map(|p| self.file_numbers.get(p.as_str()).copied())
            .collect();
        if numbers.is_empty() {
            return;
        }
        self.spares.retain(|_, v| {
            v.retain(|l| !numbers.contains(&l.file));
            !v.is_empty()
        });
        match &mut self.entries {
            Entries::Unique { ints, hashes } => {
                ints.retain(|_, l| !numbers.contains(&l.file));
                hashes.retain(|_, l| !numbers.contains(&l.file));
            }
            Entries::Multi(m) => {
                m.retain(|_, v| {
                    v.retain(|l| !numbers.contains(&l.file));
                    !v.is_empty()
                });
            }
        }
    }
}

/// The Arrow types a table's key columns are encoded with: `schema`'s fields at `columns`.
pub fn key_types(schema: &SchemaRef, columns: &[usize]) -> Vec<DataType> {
    columns
        .iter()
        .map(|&i| match schema.field(i).data_type() {
            DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
            DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
            other => other.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};

    #[test]
    fn unique_and_multi() {
        let enc = KeyEncoder::new(vec![DataType::Int64]);
        let keys = enc
            .encode(&[Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef])
            .unwrap();
        let mut idx = KeyIndex::new(false);
        let f = idx.file_number(&Arc::from("f1"));
        for (i, k) in keys.iter().enumerate() {
            idx.insert(
                *k,
                RowLocation {
                    file: f,
                    pos: i as u32,
                },
            );
        }
        assert_eq!(idx.get(&IndexKey::Int(2)), Some(RowLocation { file: 0, pos: 1 }));
        assert_eq!(idx.remove(&IndexKey::Int(2)).unwrap().pos, 1);
        assert!(idx.get(&IndexKey::Int(2)).is_none());
        assert_eq!(idx.len(), 2);

        let enc = KeyEncoder::new(vec![DataType::Utf8, DataType::Int64]);
        let a = enc
            .encode(&[
                Arc::new(StringArray::from(vec!["x", "x", "y"])) as ArrayRef,
                Arc::new(Int64Array::from(vec![1, 1, 1])) as ArrayRef,
            ])
            .unwrap();
        assert_eq!(a[0], a[1]);
        assert_ne!(a[0], a[2]);
        let mut multi = KeyIndex::new(true);
        multi.insert(a[0], RowLocation { file: 0, pos: 0 });
        multi.insert(a[1], RowLocation { file: 0, pos: 1 });
        assert_eq!(multi.len(), 2);
        assert!(multi.remove(&a[0]).is_some());
        assert!(multi.remove(&a[0]).is_some());
        assert!(multi.remove(&a[0]).is_none());
        let mut gone = std::collections::HashSet::new();
        gone.insert("f1".to_string());
        idx.remove_files(&gone);
        assert!(idx.is_empty());
    }

    #[test]
    fn a_unique_key_found_twice_keeps_both_locations() {
        let mut idx = KeyIndex::new(false);
        let (f1, f2) = (
            idx.file_number(&Arc::from("f1")),
            idx.file_number(&Arc::from("f2")),
        );
        let (a, b) = (RowLocation { file: f1, pos: 4 }, RowLocation { file: f2, pos: 0 });
        idx.insert_found(IndexKey::Int(7), a);
        idx.insert_found(IndexKey::Int(8), RowLocation { file: f1, pos: 5 });
        // Found again (another writer inserted key 7): the last found is the key's row.
        idx.insert_found(IndexKey::Int(7), b);
        assert_eq!(idx.get(&IndexKey::Int(7)), Some(b));
        assert_eq!(idx.spares(), 1);
        // The key's next change deletes both.
        assert_eq!(idx.remove(&IndexKey::Int(7)), Some(b));
        assert_eq!(idx.take_spares(&IndexKey::Int(7)), vec![a]);
        assert!(idx.take_spares(&IndexKey::Int(7)).is_empty());
        assert!(idx.take_spares(&IndexKey::Int(8)).is_empty());
        // Spares in rewritten files go with them.
        idx.insert_found(IndexKey::Int(8), RowLocation { file: f2, pos: 1 });
        assert_eq!(idx.spares(), 1);
        let gone = std::collections::HashSet::from(["f1".to_string()]);
        idx.remove_files(&gone);
        assert_eq!(idx.spares(), 0);
        assert_eq!(idx.get(&IndexKey::Int(8)), Some(RowLocation { file: f2, pos: 1 }));
        // Whole-row keys keep every location as they are, no spares.
        let mut multi = KeyIndex::new(true);
        multi.insert_found(IndexKey::Int(1), a);
        multi.insert_found(IndexKey::Int(1), b);
        assert_eq!((multi.len(), multi.spares()), (2, 0));
    }
}
