//! Which ids the cache should hold: built from each full snapshot (or, on
//! a resume, from the keys Redis holds) and kept up to date by every write,
//! so that a miss can tell a lost key from an id the source does not have.

use std::sync::Mutex;

use crate::bloom::Members;

/// The membership filter of one cache, and the one being built beside it
/// while a snapshot loads.
#[derive(Debug)]
pub(crate) struct Membership {
    state: Mutex<State>,
    exact_limit: u64,
}

#[derive(Debug, Default)]
struct State {
    /// `None` until a first build finished.
    current: Option<Members>,
    /// A build under way, with its token: every write goes to it too.
    building: Option<(u64, Members)>,
    builds: u64,
}

/// The filter's shape, for stats and dashboards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MembershipStatus {
    /// Whether a build finished (before: misses are not classified).
    pub ready: bool,
    /// Whether it keeps ids exactly (below the exact limit) or in a Bloom
    /// filter.
    pub exact: bool,
    /// Bytes it holds.
    pub bytes: u64,
}

impl Membership {
    pub(crate) fn new(exact_limit: u64) -> Self {
        Self {
            state: Mutex::default(),
            exact_limit,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a fresh filter for about `expected` ids; writes go to both
    /// until [`finish`](Self::finish) swaps it in. Returns its token.
    pub(crate) fn begin(&self, expected: u64) -> u64 {
        let mut state = self.state();
        state.builds += 1;
        let token = state.builds;
        state.building = Some((token, Members::new(expected, self.exact_limit)));
        token
    }

    /// The build `token` will see about `expected` ids.
    pub(crate) fn reserve(&self, token: u64, expected: u64) {
        if let Some((t, members)) = &mut self.state().building
            && *t == token
        {
            members.reserve(expected);
        }
    }

    /// The build `token` is complete: it replaces the current filter
    /// (unless a later build started meanwhile).
    pub(crate) fn finish(&self, token: u64) {
        let mut state = self.state();
        if state.building.as_ref().is_some_and(|(t, _)| *t == token)
            && let Some((_, members)) = state.building.take()
        {
            state.current = Some(members);
        }
    }

    /// The build `token` failed: drop it, keep the current filter.
    pub(crate) fn abandon(&self, token: u64) {
        let mut state = self.state();
        if state.building.as_ref().is_some_and(|(t, _)| *t == token) {
            state.building = None;
        }
    }

    /// `present` now exist in the source, `gone` no longer do.
    pub(crate) fn note<'a>(
        &self,
        present: impl IntoIterator<Item = &'a str>,
        gone: impl IntoIterator<Item = &'a str>,
    ) {
        let mut state = self.state();
        let State {
            current, building, ..
        } = &mut *state;
        let mut targets: Vec<&mut Members> = current
            .iter_mut()
            .chain(building.iter_mut().map(|(_, m)| m))
            .collect();
        if targets.is_empty() {
            return;
        }
        for id in present {
            targets.iter_mut().for_each(|m| m.insert(id));
        }
        for id in gone {
            targets.iter_mut().for_each(|m| m.remove(id));
        }
    }

    /// Whether the source may have `id`: `None` before the first build.
    pub(crate) fn contains(&self, id: &str) -> Option<bool> {
        self.state().current.as_ref().map(|m| m.contains(id))
    }

    pub(crate) fn status(&self) -> MembershipStatus {
        let state = self.state();
        match &state.current {
            Some(m) => MembershipStatus {
                ready: true,
                exact: m.is_exact(),
                bytes: m.bytes() as u64,
            },
            None => MembershipStatus::default(),
        }
    }
}
