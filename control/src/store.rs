//! The manager's state store: the one place of truth for nodes, networks,
//! address allocations, containers and cluster secrets.
//!
//! The [`Store`] trait is deliberately raw: tables of `String` keys to byte
//! values, read one at a time or scanned, and written only through a
//! [`Txn`] that is applied all or nothing. A transaction is a plain list of
//! operations, so a Raft-replicated store can later ship the same `Txn` as a
//! log entry and apply it on every manager; nothing above this module needs
//! to change for that. Typed access ([`StoreExt`]) is layered on top, with
//! records serialized as JSON (readable with any redb viewer, and schema
//! changes stay additive through serde defaults).
//!
//! Two implementations: [`RedbStore`] (embedded, crash-safe, on disk) and
//! [`MemStore`] (for tests and dry runs).
//!
//! Callers serialize their read-modify-write sequences (one manager, one
//! lock in the daemon). [`Txn::require_absent`] still guards the writes whose
//! duplication would be harmful, such as an address allocation, so a lost
//! race fails cleanly instead of handing an address out twice.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use redb::{ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Errors of the store layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The embedded database failed (I/O, corruption, lock held by another
    /// process).
    #[error("state store: {0}")]
    Db(Box<redb::Error>),
    /// A stored record does not parse as its type.
    #[error("state store: record {table}/{key} is corrupt: {source}")]
    Corrupt {
        table: String,
        key: String,
        source: serde_json::Error,
    },
    /// A record could not be serialized (should not happen for our types).
    #[error("state store: cannot encode record {table}/{key}: {source}")]
    Encode {
        table: String,
        key: String,
        source: serde_json::Error,
    },
    /// A [`Txn::require_absent`] precondition failed; nothing was written.
    #[error("state store: {table}/{key} already exists (concurrent change?); nothing was written")]
    Conflict { table: String, key: String },
}

macro_rules! redb_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(Box::new(e.into()))
            }
        }
    )*};
}
redb_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// One write inside a [`Txn`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put {
        table: &'static str,
        key: String,
        value: Vec<u8>,
    },
    Delete {
        table: &'static str,
        key: String,
    },
    /// Precondition: the key must not exist when the transaction applies
    /// (checked before any write of the same transaction).
    RequireAbsent {
        table: &'static str,
        key: String,
    },
}

/// An atomic batch of writes: applied all or nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    ops: Vec<Op>,
}

impl Txn {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `record` under its key, replacing any previous value.
    pub fn put<R: Record>(&mut self, record: &R) -> Result<&mut Self, StoreError> {
        let key = record.key();
        let value = serde_json::to_vec(record).map_err(|source| StoreError::Encode {
            table: R::TABLE.to_owned(),
            key: key.clone(),
            source,
        })?;
        self.ops.push(Op::Put {
            table: R::TABLE,
            key,
            value,
        });
        Ok(self)
    }

    /// Deletes the record of type `R` under `key` (no-op if absent).
    pub fn delete<R: Record>(&mut self, key: &str) -> &mut Self {
        self.ops.push(Op::Delete {
            table: R::TABLE,
            key: key.to_owned(),
        });
        self
    }

    /// Fails the whole transaction if a record of type `R` exists under `key`.
    pub fn require_absent<R: Record>(&mut self, key: &str) -> &mut Self {
        self.ops.push(Op::RequireAbsent {
            table: R::TABLE,
            key: key.to_owned(),
        });
        self
    }

    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// A typed record kept in one table of the store.
pub trait Record: Serialize + DeserializeOwned {
    /// The table holding records of this type.
    const TABLE: &'static str;
    /// The record's key inside its table.
    fn key(&self) -> String;
}

/// Raw storage: string keys to bytes, grouped in tables.
pub trait Store {
    /// The value under `key` in `table`, if any.
    fn read(&self, table: &'static str, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every (key, value) in `table`, ordered by key.
    fn scan(&self, table: &'static str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Applies every op of `txn` atomically: all of them, or none when one
    /// precondition fails or the storage fails.
    fn apply(&self, txn: &Txn) -> Result<(), StoreError>;
}

fn decode<R: Record>(key: &str, bytes: &[u8]) -> Result<R, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        table: R::TABLE.to_owned(),
        key: key.to_owned(),
        source,
    })
}

/// Typed access over any [`Store`].
pub trait StoreExt: Store {
    fn get<R: Record>(&self, key: &str) -> Result<Option<R>, StoreError> {
        match self.read(R::TABLE, key)? {
            Some(bytes) => decode(key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    fn list<R: Record>(&self) -> Result<Vec<R>, StoreError> {
        self.scan(R::TABLE)?
            .iter()
            .map(|(k, v)| decode(k, v))
            .collect()
    }

    /// Puts one record (a transaction of one).
    fn put<R: Record>(&self, record: &R) -> Result<(), StoreError> {
        let mut txn = Txn::new();
        txn.put(record)?;
        self.apply(&txn)
    }

    /// Deletes one record; absent keys are not an error.
    fn delete<R: Record>(&self, key: &str) -> Result<(), StoreError> {
        let mut txn = Txn::new();
        txn.delete::<R>(key);
        self.apply(&txn)
    }
}

impl<S: Store + ?Sized> StoreExt for S {}

impl<S: Store + ?Sized> Store for &S {
    fn read(&self, table: &'static str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        (**self).read(table, key)
    }
    fn scan(&self, table: &'static str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        (**self).scan(table)
    }
    fn apply(&self, txn: &Txn) -> Result<(), StoreError> {
        (**self).apply(txn)
    }
}

impl<S: Store + ?Sized> Store for std::sync::Arc<S> {
    fn read(&self, table: &'static str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        (**self).read(table, key)
    }
    fn scan(&self, table: &'static str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        (**self).scan(table)
    }
    fn apply(&self, txn: &Txn) -> Result<(), StoreError> {
        (**self).apply(txn)
    }
}

impl<S: Store + ?Sized> Store for Box<S> {
    fn read(&self, table: &'static str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        (**self).read(table, key)
    }
    fn scan(&self, table: &'static str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        (**self).scan(table)
    }
    fn apply(&self, txn: &Txn) -> Result<(), StoreError> {
        (**self).apply(txn)
    }
}

fn table_def(name: &str) -> TableDefinition<'_, &'static str, &'static [u8]> {
    TableDefinition::new(name)
}

/// The on-disk store, one redb file.
pub struct RedbStore {
    db: redb::Database,
}

impl RedbStore {
    /// Opens the store at `path`, creating it if missing. Fails if another
    /// process holds it open.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Ok(Self {
            db: redb::Database::create(path)?,
        })
    }
}

impl Store for RedbStore {
    fn read(&self, table: &'static str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let rtx = self.db.begin_read()?;
        let t = match rtx.open_table(table_def(table)) {
            Ok(t) => t,
            // Nothing was ever written to this table.
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(t.get(key)?.map(|v| v.value().to_vec()))
    }

    fn scan(&self, table: &'static str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let rtx = self.db.begin_read()?;
        let t = match rtx.open_table(table_def(table)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for entry in t.iter()? {
            let (k, v) = entry?;
            out.push((k.value().to_owned(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn apply(&self, txn: &Txn) -> Result<(), StoreError> {
        let wtx = self.db.begin_write()?;
        // Preconditions first, so a failing one leaves nothing half-written
        // (dropping `wtx` without commit aborts it anyway).
        for op in &txn.ops {
            if let Op::RequireAbsent { table, key } = op {
                let t = wtx.open_table(table_def(table))?;
                if t.get(key.as_str())?.is_some() {
                    return Err(StoreError::Conflict {
                        table: (*table).to_owned(),
                        key: key.clone(),
                    });
                }
            }
        }
        for op in &txn.ops {
            match op {
                Op::Put { table, key, value } => {
                    let mut t = wtx.open_table(table_def(table))?;
                    t.insert(key.as_str(), value.as_slice())?;
                }
                Op::Delete { table, key } => {
                    let mut t = wtx.open_table(table_def(table))?;
                    t.remove(key.as_str())?;
                }
                Op::RequireAbsent { .. } => {}
            }
        }
        wtx.commit()?;
        Ok(())
    }
}

type Tables = BTreeMap<&'static str, BTreeMap<String, Vec<u8>>>;

/// An in-memory store with the same semantics, for tests.
#[derive(Default)]
pub struct MemStore {
    tables: Mutex<Tables>,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        // A panic while holding the lock cannot leave a half-applied txn
        // (apply works on a copy), so a poisoned map is still consistent.
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for MemStore {
    fn read(&self, table: &'static str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().get(table).and_then(|t| t.get(key)).cloned())
    }

    fn scan(&self, table: &'static str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(self
            .lock()
            .get(table)
            .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default())
    }

    fn apply(&self, txn: &Txn) -> Result<(), StoreError> {
        let mut tables = self.lock();
        let mut next = tables.clone();
        for op in &txn.ops {
            if let Op::RequireAbsent { table, key } = op {
                if next.get(table).is_some_and(|t| t.contains_key(key)) {
                    return Err(StoreError::Conflict {
                        table: (*table).to_owned(),
                        key: key.clone(),
                    });
                }
            }
        }
        for op in &txn.ops {
            match op {
                Op::Put { table, key, value } => {
                    next.entry(table)
                        .or_default()
                        .insert(key.clone(), value.clone());
                }
                Op::Delete { table, key } => {
                    if let Some(t) = next.get_mut(table) {
                        t.remove(key);
                    }
                }
                Op::RequireAbsent { .. } => {}
            }
        }
        *tables = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Thing {
        name: String,
        n: u32,
    }
    impl Record for Thing {
        const TABLE: &'static str = "things";
        fn key(&self) -> String {
            self.name.clone()
        }
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Other {
        id: u32,
    }
    impl Record for Other {
        const TABLE: &'static str = "others";
        fn key(&self) -> String {
            self.id.to_string()
        }
    }

    fn thing(name: &str, n: u32) -> Thing {
        Thing {
            name: name.into(),
            n,
        }
    }

    fn exercise(s: &dyn Store) {
        assert_eq!(s.get::<Thing>("a").unwrap(), None);
        assert!(s.list::<Thing>().unwrap().is_empty());
        s.put(&thing("b", 2)).unwrap();
        s.put(&thing("a", 1)).unwrap();
        assert_eq!(s.get::<Thing>("a").unwrap(), Some(thing("a", 1)));
        // Ordered by key.
        assert_eq!(
            s.list::<Thing>().unwrap(),
            vec![thing("a", 1), thing("b", 2)]
        );
        s.put(&thing("a", 10)).unwrap();
        assert_eq!(s.get::<Thing>("a").unwrap().map(|t| t.n), Some(10));
        s.delete::<Thing>("a").unwrap();
        s.delete::<Thing>("nope").unwrap();
        assert_eq!(s.list::<Thing>().unwrap(), vec![thing("b", 2)]);

        // Multi-table transaction, all visible together.
        let mut txn = Txn::new();
        txn.put(&thing("c", 3)).unwrap();
        txn.put(&Other { id: 7 }).unwrap();
        txn.delete::<Thing>("b");
        s.apply(&txn).unwrap();
        assert_eq!(s.list::<Thing>().unwrap(), vec![thing("c", 3)]);
        assert_eq!(s.get::<Other>("7").unwrap(), Some(Other { id: 7 }));

        // A failing precondition writes nothing, even ops listed before it.
        let mut txn = Txn::new();
        txn.put(&thing("d", 4)).unwrap();
        txn.delete::<Thing>("c");
        txn.require_absent::<Other>("7");
        let e = s.apply(&txn).unwrap_err();
        assert!(matches!(e, StoreError::Conflict { ref key, .. } if key == "7"));
        assert_eq!(s.list::<Thing>().unwrap(), vec![thing("c", 3)]);

        // Corrupt records are reported, not panicked on.
        let mut txn = Txn::new();
        txn.ops.push(Op::Put {
            table: "things",
            key: "bad".into(),
            value: b"{not json".to_vec(),
        });
        s.apply(&txn).unwrap();
        assert!(matches!(
            s.get::<Thing>("bad"),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn mem_store_semantics() {
        exercise(&MemStore::new());
    }

    #[test]
    fn redb_store_semantics() {
        let dir = tempfile::tempdir().unwrap();
        exercise(&RedbStore::open(dir.path().join("state.redb")).unwrap());
    }

    #[test]
    fn redb_store_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let s = RedbStore::open(&path).unwrap();
            let mut txn = Txn::new();
            txn.put(&thing("x", 1)).unwrap();
            txn.put(&Other { id: 1 }).unwrap();
            s.apply(&txn).unwrap();
            s.put(&thing("y", 2)).unwrap();
            s.delete::<Thing>("x").unwrap();
        }
        let s = RedbStore::open(&path).unwrap();
        assert_eq!(s.list::<Thing>().unwrap(), vec![thing("y", 2)]);
        assert_eq!(s.get::<Other>("1").unwrap(), Some(Other { id: 1 }));
    }

    #[test]
    fn redb_refuses_second_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let _s = RedbStore::open(&path).unwrap();
        assert!(matches!(RedbStore::open(&path), Err(StoreError::Db(_))));
    }
}
