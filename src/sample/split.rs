//! `sklearn.model_selection.train_test_split(ids, labels, stratify=labels,
//! test_size=f, random_state=seed)`: StratifiedShuffleSplit's one split, drawn with
//! numpy's legacy RandomState exactly as scikit-learn draws it.

use super::mt19937::RandomState;

/// Train and test positions (into the input list), in scikit-learn's output order.
pub fn stratified_split(
    labels: &[i64],
    test_size: f64,
    seed: u32,
) -> Result<(Vec<usize>, Vec<usize>), String> {
    let n = labels.len();
    if !(test_size > 0.0 && test_size < 1.0) {
        return Err(format!("test_size={test_size} should be between 0 and 1"));
    }
    let n_test = (test_size * n as f64).ceil() as usize;
    let n_train = n.saturating_sub(n_test);
    if n_train == 0 || n_test == 0 {
        return Err(format!(
            "with n_samples={n}, test_size={test_size} the train or the validation set is empty"
        ));
    }
    // np.unique(y, return_inverse=True): sorted classes.
    let mut classes: Vec<i64> = labels.to_vec();
    classes.sort_unstable();
    classes.dedup();
    let k = classes.len();
    let y_idx: Vec<usize> = labels
        .iter()
        .map(|l| classes.binary_search(l).unwrap_or(0))
        .collect();
    let mut counts = vec![0usize; k];
    for &c in &y_idx {
        counts[c] += 1;
    }
    if counts.iter().any(|&c| c < 2) {
        return Err("the least populated class (malignant or benign patients) has only 1 member; stratification needs at least 2".into());
    }
    if n_train < k || n_test < k {
        return Err(format!(
            "the train ({n_train}) and validation ({n_test}) sets must each hold at least one patient per class ({k})"
        ));
    }
    let class_indices: Vec<Vec<usize>> = (0..k)
        .map(|c| (0..n).filter(|&i| y_idx[i] == c).collect())
        .collect();
    let mut rng = RandomState::new(seed);
    let n_i = approximate_mode(&counts, n_train, &mut rng);
    let remaining: Vec<usize> = counts.iter().zip(&n_i).map(|(c, t)| c - t).collect();
    let t_i = approximate_mode(&remaining, n_test, &mut rng);
    let mut train = Vec::new();
    let mut test = Vec::new();
    for c in 0..k {
        let perm = rng.permutation(counts[c]);
        let idx: Vec<usize> = perm.iter().map(|&p| class_indices[c][p]).collect();
        train.extend_from_slice(&idx[..n_i[c]]);
        test.extend_from_slice(&idx[n_i[c]..n_i[c] + t_i[c]]);
    }
    rng.shuffle(&mut train);
    rng.shuffle(&mut test);
    Ok((train, test))
}

/// scikit-learn's `_approximate_mode(class_counts, n_draws, rng)`.
fn approximate_mode(counts: &[usize], n_draws: usize, rng: &mut RandomState) -> Vec<usize> {
    let total: usize = counts.iter().sum();
    let continuous: Vec<f64> = counts
        .iter()
        .map(|&c| c as f64 / total as f64 * n_draws as f64)
        .collect();
    let mut floored: Vec<f64> = continuous.iter().map(|v| v.floor()).collect();
    let mut need = (n_draws as f64 - floored.iter().sum::<f64>()) as i64;
    if need > 0 {
        let remainder: Vec<f64> = continuous
            .iter()
            .zip(&floored)
            .map(|(c, f)| c - f)
            .collect();
        let mut values = remainder.clone();
        values.sort_by(|a, b| b.total_cmp(a));
        values.dedup();
        for value in values {
            let inds: Vec<usize> = (0..remainder.len())
                .filter(|&i| remainder[i] == value)
                .collect();
            let add_now = inds.len().min(need as usize);
            // rng.choice(inds, add_now, replace=False) = inds[permutation(len)[:add_now]]
            let perm = rng.permutation(inds.len());
            for &p in &perm[..add_now] {
                floored[inds[p]] += 1.0;
            }
            need -= add_now as i64;
            if need == 0 {
                break;
            }
        }
    }
    floored.iter().map(|&v| v as usize).collect()
}
