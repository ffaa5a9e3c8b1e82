//! A line's xattrs, set the way the reference sets them: a later duplicate name replaces the
//! earlier value, and the per-inode budget ([`XATTR_BUDGET`]) is checked after every set.

use std::collections::HashMap;

use crate::erofs::format::XATTR_BUDGET;
use crate::tree::{self, Xattr, XATTR_NAME_MAX, XATTR_SIZE_MAX};

/// Reference-compatible accounting of one inode's xattrs (replace on duplicate name,
/// budget checked after every set).
#[derive(Default)]
pub(super) struct XattrBudget {
    used: usize,
}

impl XattrBudget {
    /// Cost of adding an xattr named `name` with `vlen` value bytes when `n_before`
    /// xattrs are present.
    fn entry_cost(n_before: usize, name_len: usize, vlen: usize) -> usize {
        let c = 7 + name_len + vlen;
        if n_before == 0 {
            c + 12
        } else {
            c
        }
    }

    /// Remove the contribution of an existing entry (`n_after` xattrs remain).
    fn remove(&mut self, n_after: usize, name_len: usize, vlen: usize) {
        if n_after == 0 {
            self.used = 0;
        } else {
            self.used = self.used.saturating_sub(7 + name_len + vlen);
        }
    }
}

/// Set (or replace) an xattr with the reference's budget check.
pub(super) fn set_xattr(
    xattrs: &mut Vec<Xattr>,
    index: &mut Option<HashMap<Vec<u8>, usize>>,
    budget: &mut XattrBudget,
    key: Vec<u8>,
    value: Vec<u8>,
) -> Result<(), String> {
    if key.is_empty() {
        return Err("empty xattr name".into());
    }
    if key.len() > XATTR_NAME_MAX {
        return Err(format!("xattr name longer than {XATTR_NAME_MAX} bytes"));
    }
    if key.contains(&0) {
        return Err("NUL byte in xattr name".into());
    }
    if value.len() > XATTR_SIZE_MAX - 1 {
        return Err(format!("xattr {} value longer than {} bytes", tree::show(&key), XATTR_SIZE_MAX - 1));
    }
    // Linear search for few xattrs, a map once a line holds many (hostile input).
    if index.is_none() && xattrs.len() >= 16 {
        *index = Some(xattrs.iter().enumerate().map(|(i, x)| (x.key.clone(), i)).collect());
    }
    let existing = match index {
        Some(m) => m.get(&key).copied(),
        None => xattrs.iter().position(|x| x.key == key),
    };
    if let Some(i) = existing {
        let old = xattrs.swap_remove(i);
        budget.remove(xattrs.len(), key.len(), old.value.len());
        if let Some(m) = index {
            m.remove(&key);
            if let Some(moved) = xattrs.get(i) {
                m.insert(moved.key.clone(), i);
            }
        }
    }
    let cost = XattrBudget::entry_cost(xattrs.len(), key.len(), value.len());
    if budget.used + cost > XATTR_BUDGET {
        return Err(format!("xattrs exceed the per-file budget of {XATTR_BUDGET} bytes"));
    }
    budget.used += cost;
    if let Some(m) = index {
        m.insert(key.clone(), xattrs.len());
    }
    xattrs.push(Xattr { key, value });
    Ok(())
}
