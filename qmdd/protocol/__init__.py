"""The contract between `qmdctl` and the daemon, shared by both: the error catalogue (`errors`), the
frames and method parameters (`wire`), their encoding (`framing`) and the JSON Schemas of the answers
(`schemas`, behind `qmdctl --emit-spec` and the HTTP door's OpenAPI document). Standard library and msgpack
only."""
