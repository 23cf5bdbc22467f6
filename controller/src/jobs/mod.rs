//! `serve`'s scheduled jobs and the use cases they run on their schedule (also
//! reached from their CLI commands): NBP rates (`rates`), backups (`backups`). Each
//! runs under the supervisor, which restarts it and reports it on `/healthz`.

pub mod backups;
pub mod rates;
