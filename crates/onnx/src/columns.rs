//! Which columns of a file feed which model inputs.
//!
//! By name when every model input is named after a column (each input then takes one value per row);
//! otherwise by position: the model's inputs, in order, take the file's last columns, so leading
//! columns such as ids are left out. A file with fewer columns than the model needs is refused.

use crate::shape::InputSpec;

/// For each model input, the indices of the file columns that feed it, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureColumns {
    pub per_input: Vec<Vec<usize>>,
}

impl FeatureColumns {
    /// Every column index used, in input order.
    pub fn all(&self) -> Vec<usize> {
        self.per_input.iter().flatten().copied().collect()
    }

    /// Maps `header` onto `inputs`.
    ///
    /// # Errors
    /// A message saying how many columns the model needs when the file has too few.
    pub fn choose(header: &[String], inputs: &[InputSpec]) -> Result<Self, String> {
        let by_name: Option<Vec<Vec<usize>>> = inputs
            .iter()
            .map(|input| {
                let found = header.iter().position(|c| c == &input.name)?;
                (input.width == 1).then(|| vec![found])
            })
            .collect();
        if let Some(per_input) = by_name {
            return Ok(Self { per_input });
        }
        let needed: usize = inputs.iter().map(|i| i.width).sum();
        if header.len() < needed {
            return Err(format!(
                "the model needs {needed} feature column{} and the file has {} ({})",
                if needed == 1 { "" } else { "s" },
                header.len(),
                header.join(", ")
            ));
        }
        let mut next = header.len() - needed;
        let per_input = inputs
            .iter()
            .map(|input| {
                let cols: Vec<usize> = (next..next + input.width).collect();
                next += input.width;
                cols
            })
            .collect();
        Ok(Self { per_input })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn input(name: &str, width: usize) -> InputSpec {
        InputSpec { name: name.into(), width, float64: false }
    }

    #[test]
    fn single_wide_input_takes_the_last_columns() {
        let cols = FeatureColumns::choose(&header(&["id", "a", "b", "c"]), &[input("features", 3)]).unwrap();
        assert_eq!(cols.per_input, vec![vec![1, 2, 3]]);
    }

    #[test]
    fn inputs_named_after_columns_are_fed_by_name() {
        let cols =
            FeatureColumns::choose(&header(&["id", "b", "a", "extra"]), &[input("a", 1), input("b", 1)]).unwrap();
        assert_eq!(cols.per_input, vec![vec![2], vec![1]]);
    }

    #[test]
    fn partial_name_match_falls_back_to_position() {
        let cols = FeatureColumns::choose(&header(&["id", "a", "x"]), &[input("a", 1), input("b", 1)]).unwrap();
        assert_eq!(cols.per_input, vec![vec![1], vec![2]]);
    }

    #[test]
    fn too_few_columns_is_refused_with_the_counts() {
        let err = FeatureColumns::choose(&header(&["id", "a"]), &[input("features", 3)]).unwrap_err();
        assert_eq!(err, "the model needs 3 feature columns and the file has 2 (id, a)");
    }
}
