//! Which images of an epoch one rank takes.

/// Rank `rank` of `world` processes' part of an epoch, cut as PyTorch's
/// `DistributedSampler` cuts it: the epoch's order is padded with its own first entries
/// to a multiple of `world` (training only), and rank r takes positions r, r + world,
/// r + 2·world, … With a per-rank batch of B / world, the ranks' k-th batches together
/// hold the images of the single-process k-th batch of B.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub world: usize,
}

impl Shard {
    /// One process: every position.
    pub const WHOLE: Shard = Shard { rank: 0, world: 1 };

    /// Positions added to an epoch of `n` images so that it divides over the ranks.
    pub fn padding(&self, n: usize) -> usize {
        n.next_multiple_of(self.world.max(1)) - n
    }

    /// This rank's `(position in the epoch, image)` pairs of the epoch `order`; `pad`
    /// repeats the order's first images to equal shards (training), else the last shards
    /// are a position shorter (evaluation, where every image counts once).
    pub fn take(&self, order: &[usize], pad: bool) -> Vec<(u64, usize)> {
        let w = self.world.max(1);
        let n = order.len();
        let end = if pad && n > 0 { n + self.padding(n) } else { n };
        (self.rank..end).step_by(w).map(|p| (p as u64, order[p % n])).collect()
    }

    /// The images this rank takes of an epoch of `n` with padding.
    pub fn len(&self, n: usize) -> usize {
        (n + self.padding(n)) / self.world.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_split_an_epoch_as_distributed_sampler_does() {
        let order = [4, 0, 3, 1, 2];
        let r0 = Shard { rank: 0, world: 2 }.take(&order, true);
        let r1 = Shard { rank: 1, world: 2 }.take(&order, true);
        // Padded to 6 with the order's first image; position 5 wraps to position 0's image.
        assert_eq!(r0, vec![(0, 4), (2, 3), (4, 2)]);
        assert_eq!(r1, vec![(1, 0), (3, 1), (5, 4)]);
        assert_eq!(Shard { rank: 1, world: 2 }.len(5), 3);
        // Evaluation: no padding, each image once over the ranks.
        let e: Vec<usize> =
            (0..3).flat_map(|r| Shard { rank: r, world: 3 }.take(&order, false)).map(|(_, i)| i).collect();
        let mut sorted = e.clone();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1, 2, 3, 4]);
        assert_eq!(
            Shard::WHOLE.take(&order, true),
            order.iter().enumerate().map(|(p, &i)| (p as u64, i)).collect::<Vec<_>>()
        );
        assert!(Shard::WHOLE.take(&[], true).is_empty());
    }
}
