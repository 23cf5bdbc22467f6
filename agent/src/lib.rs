//! mai-fleet agent library: the sources (Docker discovery, the tenant's SQLite usage
//! store), the sink (the fleet Postgres), tenant health, and the cycle that joins
//! them. The `agent` binary runs cycles on an interval; benchmarks drive the parts.

pub mod checks;
pub mod copy;
pub mod cycle;
pub mod discover;
pub mod health;
pub mod reader;
pub mod sink;
pub mod spool;
pub mod tables;
