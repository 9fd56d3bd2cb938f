"""What starts and feeds a deployment on one machine: service launcher, Milvus server, the package-image
corpus, galleries. Used by the CLI, the tests and the benchmarks; never by the serving processes."""
