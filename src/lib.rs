pub mod routes;
pub mod snapshot;
pub mod source;
pub mod units;
pub mod yaml;
