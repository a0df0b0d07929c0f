//! Pairwise evaluation of a clustering against the truth: a pair of records
//! is a true positive when both put the two records in one cluster.

use std::collections::HashMap;

/// Pairwise precision, recall and F1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Metrics {
    /// True positives over predicted pairs (1 when nothing is predicted).
    pub precision: f64,
    /// True positives over true pairs (1 when there is no true pair).
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
    /// Pairs in one cluster in both.
    pub true_positives: u64,
    /// Pairs predicted together but truly apart.
    pub false_positives: u64,
    /// Pairs truly together but predicted apart.
    pub false_negatives: u64,
}

fn pairs(n: u64) -> u64 {
    n * n.saturating_sub(1) / 2
}

/// Compare a predicted cluster assignment with the true one (one cluster
/// id per record, in the same order; ids need not match between the two).
/// Records beyond the shorter slice are ignored. Linear time.
pub fn pairwise_metrics(truth: &[u64], predicted: &[u64]) -> Metrics {
    let n = truth.len().min(predicted.len());
    let mut true_sizes: HashMap<u64, u64> = HashMap::new();
    let mut predicted_sizes: HashMap<u64, u64> = HashMap::new();
    let mut both: HashMap<(u64, u64), u64> = HashMap::new();
    for (&t, &p) in truth[..n].iter().zip(&predicted[..n]) {
        *true_sizes.entry(t).or_default() += 1;
        *predicted_sizes.entry(p).or_default() += 1;
        *both.entry((t, p)).or_default() += 1;
    }
    let tp: u64 = both.values().map(|&c| pairs(c)).sum();
    let predicted_pairs: u64 = predicted_sizes.values().map(|&c| pairs(c)).sum();
    let true_pairs: u64 = true_sizes.values().map(|&c| pairs(c)).sum();
    let precision = if predicted_pairs == 0 { 1.0 } else { tp as f64 / predicted_pairs as f64 };
    let recall = if true_pairs == 0 { 1.0 } else { tp as f64 / true_pairs as f64 };
    let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
    Metrics {
        precision,
        recall,
        f1,
        true_positives: tp,
        false_positives: predicted_pairs - tp,
        false_negatives: true_pairs - tp,
    }
}

/// Clusters implied by links between records `0..n` (transitive closure,
/// union–find): the cluster id of each record is the smallest record index
/// in its cluster. Links to records `≥ n` are ignored.
pub fn clusters_from_links(n: usize, links: &[(usize, usize)]) -> Vec<u64> {
    let mut parent: Vec<usize> = (0..n).collect();
    fn find(parent: &mut [usize], mut x: usize) -> usize {
        while parent[x] != x {
            parent[x] = parent[parent[x]];
            x = parent[x];
        }
        x
    }
    for &(a, b) in links {
        if a >= n || b >= n {
            continue;
        }
        let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
        if ra != rb {
            parent[ra.max(rb)] = ra.min(rb);
        }
    }
    (0..n).map(|x| find(&mut parent, x) as u64).collect()
}

/// [`pairwise_metrics`] of the clusters implied by links.
pub fn pairwise_metrics_from_links(truth: &[u64], links: &[(usize, usize)]) -> Metrics {
    pairwise_metrics(truth, &clusters_from_links(truth.len(), links))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_pairs() {
        // Truth: {0,1,2}, {3,4}, {5}. Predicted: {0,1}, {2,3,4}, {5}.
        let truth = [7, 7, 7, 8, 8, 9];
        let predicted = [1, 1, 2, 2, 2, 3];
        let m = pairwise_metrics(&truth, &predicted);
        assert_eq!((m.true_positives, m.false_positives, m.false_negatives), (2, 2, 2));
        assert!((m.precision - 0.5).abs() < 1e-12);
        assert!((m.recall - 0.5).abs() < 1e-12);
        assert!((m.f1 - 0.5).abs() < 1e-12);

        let perfect = pairwise_metrics(&truth, &truth);
        assert_eq!((perfect.precision, perfect.recall, perfect.f1), (1.0, 1.0, 1.0));

        let none = pairwise_metrics(&truth, &[0, 1, 2, 3, 4, 5]);
        assert_eq!((none.precision, none.recall), (1.0, 0.0));
        assert_eq!(none.f1, 0.0);
    }

    #[test]
    fn links_close_transitively() {
        let clusters = clusters_from_links(5, &[(3, 4), (1, 3), (0, 9)]);
        assert_eq!(clusters, vec![0, 1, 2, 1, 1]);
        let m = pairwise_metrics_from_links(&[0, 1, 2, 1, 1], &[(3, 4), (1, 3)]);
        assert_eq!(m.f1, 1.0);
    }
}
