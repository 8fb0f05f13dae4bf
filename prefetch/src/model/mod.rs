//! Value types at the bottom of the crate: records, versions, changes,
//! source transactions, the worker's state, and input validation.
//!
//! | module | what |
//! |---|---|
//! | `record` | [`Record`], [`Fields`], id and field validation, composite ids |
//! | `version` | [`Version`] |
//! | `change` | [`Change`], [`ChangeKind`], [`Op`], [`Transaction`] |
//! | `report` | [`WorkerState`], [`ReconcileReport`] |

mod change;
mod record;
mod report;
mod version;

pub use change::{Change, ChangeKind, Op, Transaction};
pub use record::{
    Fields, ID_FIELD, MAX_FIELD_LEN, MAX_ID_LEN, MAX_VALUE_LEN, RESERVED_FIELD_PREFIX, Record,
    decode_key, encode_key, validate_field, validate_id,
};
pub use report::{DriftTotals, REPORT_IDS, ReconcileReport, WorkerState};
pub use version::{ParseVersionError, Version};
