//! Graph file formats.
