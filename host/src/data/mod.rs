//! Dataset loaders (filled in by the data work).
