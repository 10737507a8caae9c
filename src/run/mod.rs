//! One run of the tool: the mode the settings ask for.

pub mod backup;
pub use backup::run;
