//! External worker process adapter (being written).
