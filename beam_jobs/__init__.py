"""Apache Beam jobs: `build_tfrecords` (raw tables → TFRecords grouped by ad) and
`embed_ads` (trained visual tower → visual-embedding table). See docs/beam_jobs.md."""
