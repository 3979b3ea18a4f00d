//! Range planning for `drift`: cuts the key space under the prefix into ranges of similar
//! size by probing a bucket's key tree with one-key listings, so that the ranges can be listed
//! and merged in parallel.

use futures::stream::{self, StreamExt};

use super::listing::list_with_retry;
use super::{strip, MAX_CHAR, MAX_PROBES, PAGE};
use crate::engine::error::Result;
use crate::engine::s3::{ObjectInfo, S3Bucket};

/// A slice of the key space: keys `k` with `after < k <= upto` (`None` = unbounded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KeyRange {
    pub(super) after: Option<String>,
    pub(super) upto: Option<String>,
}

/// Turns sorted boundary keys into ranges that together cover the whole key space once.
pub(super) fn ranges_from(mut boundaries: Vec<String>) -> Vec<KeyRange> {
    boundaries.sort();
    boundaries.dedup();
    let mut ranges = Vec::with_capacity(boundaries.len() + 1);
    let mut after = None;
    for b in boundaries {
        ranges.push(KeyRange {
            after: after.clone(),
            upto: Some(b.clone()),
        });
        after = Some(b);
    }
    ranges.push(KeyRange { after, upto: None });
    ranges
}

/// Finds up to about `target` boundary keys that split the bucket's keys under `prefix` into
/// ranges of similar size, without listing the bucket: it walks the key tree one character
/// at a time, finding each prefix's children with one-key listings that skip from child to
/// child (`start_after = prefix + child + MAX_CHAR`). Any boundaries are correct, only the
/// balance depends on them, so it stops at the probe budget.
pub(super) async fn plan_boundaries(
    bucket: &S3Bucket,
    prefix: &str,
    target: usize,
    concurrency: usize,
) -> Result<Vec<String>> {
    let Some(first) = first_key(bucket, prefix, None).await? else {
        return Ok(Vec::new());
    };
    let mut leaves = vec![Leaf {
        prefix: prefix.to_string(),
        first,
        terminal: false,
    }];
    let mut probes = 1usize;
    // Deeper than this, keys that share a long prefix are better served by one range.
    for _depth in 0..64 {
        let open = leaves.iter().filter(|l| !l.terminal).count();
        if leaves.len() >= target || open == 0 || probes + open > MAX_PROBES {
            break;
        }
        let expanded: Vec<Result<(Vec<Leaf>, usize)>> = stream::iter(leaves)
            .map(|leaf| async move {
                if leaf.terminal {
                    Ok((vec![leaf], 0))
                } else {
                    children(bucket, leaf).await
                }
            })
            .buffered(concurrency.max(1))
            .collect()
            .await;
        leaves = Vec::new();
        for r in expanded {
            let (kids, cost) = r?;
            probes += cost;
            leaves.extend(kids);
        }
    }
    // The first leaf starts at the beginning; every other leaf's first key starts a range.
    let starts: Vec<String> = leaves.into_iter().skip(1).map(|l| l.first).collect();
    Ok(evenly(starts, target.saturating_sub(1)))
}

/// At most `n` of `items`, evenly spaced: the last level of the key tree can multiply the
/// leaves by up to `MAX_CHILDREN`, and every range costs its own first requests.
fn evenly<T>(items: Vec<T>, n: usize) -> Vec<T> {
    if items.len() <= n {
        return items;
    }
    let len = items.len();
    items
        .into_iter()
        .enumerate()
        .filter(|(i, _)| (i + 1) * n / len != i * n / len)
        .map(|(_, item)| item)
        .collect()
}

/// A node of the planner's key tree: every key under `prefix` is `>= first`.
struct Leaf {
    prefix: String,
    first: String,
    /// The leaf holds just the key equal to its prefix: nothing to split.
    terminal: bool,
}

/// Most children a prefix is split into per level; wide alphabets split over levels instead.
const MAX_CHILDREN: usize = 64;

/// The children of a leaf (each one character longer) and the probes spent finding them.
async fn children(bucket: &S3Bucket, leaf: Leaf) -> Result<(Vec<Leaf>, usize)> {
    let prefix = leaf.prefix;
    let mut out: Vec<Leaf> = Vec::new();
    let mut probes = 0;
    let mut next = Some(leaf.first);
    while let Some(key) = next.take() {
        if out.len() >= MAX_CHILDREN {
            // The rest of this prefix joins the last child's range.
            break;
        }
        probes += 1;
        let Some(c) = key.get(prefix.len()..).and_then(|rest| rest.chars().next()) else {
            // The key is the prefix itself: it is a leaf of its own; look past it.
            next = first_key(bucket, &prefix, Some(&key)).await?;
            out.push(Leaf {
                prefix: prefix.clone(),
                first: key,
                terminal: true,
            });
            continue;
        };
        let child = format!("{prefix}{c}");
        if out.last().is_some_and(|l| l.prefix == child) {
            // Keys containing MAX_CHAR defeat the skip; the rest stays in this child's range.
            break;
        }
        next = first_key(bucket, &prefix, Some(&format!("{child}{MAX_CHAR}"))).await?;
        out.push(Leaf {
            prefix: child,
            first: key,
            terminal: false,
        });
    }
    Ok((out, probes))
}

/// The first pages of one side's listing under the prefix (keys relative, in byte order),
/// read to decide whether to split it. They are kept: the ranges they cover are served from
/// them instead of being listed again.
#[derive(Debug, Default)]
pub(super) struct ListingHead {
    pub(super) objects: Vec<ObjectInfo>,
    /// The listing ended within these pages: they are the whole side.
    pub(super) complete: bool,
}

impl ListingHead {
    /// The objects `k` with `after < k <= upto`, and whether keys past `upto` are known (the
    /// range ends within the head).
    pub(super) fn within(&self, range: &KeyRange) -> (&[ObjectInfo], bool) {
        let from = match &range.after {
            Some(a) => self.objects.partition_point(|o| o.key <= *a),
            None => 0,
        };
        let to = match &range.upto {
            Some(u) => self.objects.partition_point(|o| o.key <= *u),
            None => self.objects.len(),
        };
        let from = from.min(to);
        (&self.objects[from..to], to < self.objects.len())
    }

    /// The last key read, where the listing continues after the head.
    pub(super) fn last_key(&self) -> Option<&str> {
        self.objects.last().map(|o| o.key.as_str())
    }
}

/// Up to `pages` pages of `prefix`: a few sequential list requests.
pub(super) async fn list_head(
    bucket: &S3Bucket,
    prefix: &str,
    pages: usize,
) -> Result<ListingHead> {
    let base = bucket.prefix();
    let full_prefix = format!("{base}{prefix}");
    let mut head = ListingHead::default();
    let mut token: Option<String> = None;
    for _ in 0..pages {
        let (objects, next) =
            list_with_retry(bucket, &full_prefix, None, token.as_deref(), PAGE).await?;
        head.objects.extend(objects.into_iter().map(|mut o| {
            o.key = strip(base, o.key);
            o
        }));
        match next {
            Some(next) => token = Some(next),
            None => {
                head.complete = true;
                break;
            }
        }
    }
    Ok(head)
}

/// The first key under `prefix` after `after` (relative keys).
pub(super) async fn first_key(
    bucket: &S3Bucket,
    prefix: &str,
    after: Option<&str>,
) -> Result<Option<String>> {
    let base = bucket.prefix();
    let full_prefix = format!("{base}{prefix}");
    let full_after = after.map(|a| format!("{base}{a}"));
    let page = list_with_retry(bucket, &full_prefix, full_after.as_deref(), None, 1).await?;
    Ok(page.0.into_iter().next().map(|o| strip(base, o.key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evenly_keeps_at_most_n_spread_out() {
        let v: Vec<usize> = (0..97).collect();
        let kept = evenly(v.clone(), 15);
        assert_eq!(kept.len(), 15);
        assert!(kept
            .windows(2)
            .all(|w| w[1] - w[0] >= 6 && w[1] - w[0] <= 7));
        assert_eq!(evenly(v.clone(), 200), v);
        assert!(evenly(v, 0).is_empty());
    }

    fn head(keys: &[&str], complete: bool) -> ListingHead {
        ListingHead {
            objects: keys
                .iter()
                .map(|k| ObjectInfo {
                    key: k.to_string(),
                    size: 1,
                    etag: None,
                    last_modified: None,
                })
                .collect(),
            complete,
        }
    }

    fn range(after: Option<&str>, upto: Option<&str>) -> KeyRange {
        KeyRange {
            after: after.map(str::to_string),
            upto: upto.map(str::to_string),
        }
    }

    fn keys(objects: &[ObjectInfo]) -> Vec<&str> {
        objects.iter().map(|o| o.key.as_str()).collect()
    }

    #[test]
    fn a_head_serves_the_part_of_a_range_it_covers() {
        let h = head(&["a", "b", "c", "d"], false);
        // Inside the head: served whole, nothing to list after it.
        let (o, ends) = h.within(&range(Some("a"), Some("c")));
        assert_eq!((keys(o), ends), (vec!["b", "c"], true));
        // A bound between keys.
        let (o, ends) = h.within(&range(None, Some("bb")));
        assert_eq!((keys(o), ends), (vec!["a", "b"], true));
        // Past the head's end: its tail, then the listing goes on.
        let (o, ends) = h.within(&range(Some("b"), Some("z")));
        assert_eq!((keys(o), ends), (vec!["c", "d"], false));
        let (o, ends) = h.within(&range(Some("c"), None));
        assert_eq!((keys(o), ends), (vec!["d"], false));
        // Wholly after the head: nothing from it.
        let (o, ends) = h.within(&range(Some("x"), None));
        assert_eq!((keys(o), ends), (Vec::<&str>::new(), false));
        assert_eq!(h.last_key(), Some("d"));
        // An empty head (nothing listed ahead) serves nothing and ends nothing.
        let empty = head(&[], false);
        let (o, ends) = empty.within(&range(None, Some("m")));
        assert_eq!((keys(o), ends), (Vec::<&str>::new(), false));
    }

    #[test]
    fn ranges_cover_everything_once() {
        let r = ranges_from(vec!["m".into(), "c".into(), "m".into()]);
        assert_eq!(
            r,
            vec![
                KeyRange {
                    after: None,
                    upto: Some("c".into())
                },
                KeyRange {
                    after: Some("c".into()),
                    upto: Some("m".into())
                },
                KeyRange {
                    after: Some("m".into()),
                    upto: None
                },
            ]
        );
        assert_eq!(
            ranges_from(Vec::new()),
            vec![KeyRange {
                after: None,
                upto: None
            }]
        );
    }
}
