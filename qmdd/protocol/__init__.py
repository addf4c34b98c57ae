"""The contract between `qmdctl` and the daemon, shared by both: the error catalogue (`errors`), the
frames and method parameters (`wire`) and their encoding (`framing`). Standard library and msgpack only."""
