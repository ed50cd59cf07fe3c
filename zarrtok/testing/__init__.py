"""Shipped test support for the test suite, the benchmarks and the demo: corpus and tokenizer
generators (:mod:`.corpus`) and a loopback S3 server with a request log (:mod:`.s3server`)."""
