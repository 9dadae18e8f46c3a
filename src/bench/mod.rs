//! Overhead benchmark (filled in below).
