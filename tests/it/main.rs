//! The integration tests: one binary (each file a module), so the workspace is linked
//! once for all of them. They run the real `pulpdist` binary against real servers on
//! loopback (nginx, rsync, s3s-fs, xorriso), installed by `scripts/test`.

mod common;

mod cdn;
mod conformance;
mod coordination;
mod deltas;
mod deploy;
mod filters;
mod gc;
mod history;
mod hostile;
mod hostile_http;
mod hostile_local;
mod integrity;
mod isos;
mod keys;
mod killpoints;
mod relay;
mod reproducible;
mod rsync;
mod s3;
mod serve;
mod soak;
mod sync;
mod tls;
mod verify;
