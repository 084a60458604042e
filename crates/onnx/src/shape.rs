//! What a model's inputs and outputs are to Cove: the vocabulary the readers, the column matching and
//! the output writer share with the model loader, kept apart so none of them depends on another.

/// A model input as Cove feeds it: one row per input row, `width` values per row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSpec {
    pub name: String,
    /// Values per row: 1 for a `[rows]` input, `k` for a `[rows, k]` input.
    pub width: usize,
    /// The input takes float64 (otherwise float32).
    pub float64: bool,
}

/// Which model outputs become the prediction and the class probabilities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRoles {
    /// An output with one value per row (a label or a score).
    pub prediction: Option<usize>,
    /// A float output with one value per class; its argmax is the prediction when there is no label.
    pub probabilities: Option<(usize, usize)>,
}
