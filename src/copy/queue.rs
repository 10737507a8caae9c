//! Which task a worker reads next.
//!
//! Tasks go out in plan order (biggest files first), with one exception:
//! where the sink takes them in any order (DEST itself, not a tar stream), a
//! worker passes over the tasks of a file another worker is writing, as
//! long as tasks of other files remain. Two writers of one file queue on its
//! inode lock in the kernel (ext4 holds it while it copies each write into
//! the page cache): perf showed 10-15% of a -j 2 backup's samples in
//! `rwsem_spin_on_owner`, and the big relation files that hold most of the
//! bytes are exactly the ones several workers would share.

use std::collections::HashSet;
use std::sync::Mutex;

use crate::plan::Task;

/// How far past the first free task a worker looks for an idle file: a
/// 1 GB segment is 128 tasks at the default chunk size, 131,072 at the
/// smallest (8 kB), which a scan on every take would not afford.
const LOOK_AHEAD: usize = 1024;

pub struct Queue<'a> {
    tasks: &'a [Task],
    /// Whether a task may be taken before the ones ahead of it.
    any_order: bool,
    state: Mutex<State>,
}

struct State {
    taken: Vec<bool>,
    /// Every task before it is taken.
    first_free: usize,
    /// Per file of the plan: how many workers hold a task of it.
    writers: Vec<u32>,
}

impl<'a> Queue<'a> {
    pub fn new(tasks: &'a [Task], files: usize, any_order: bool) -> Queue<'a> {
        Queue {
            tasks,
            any_order,
            state: Mutex::new(State {
                taken: vec![false; tasks.len()],
                first_free: 0,
                writers: vec![0; files],
            }),
        }
    }

    /// The next task for a worker, None when every task is taken. Hand it
    /// back with [`Queue::done`].
    pub fn take(&self) -> Option<usize> {
        let mut s = self.state.lock().unwrap();
        let state = &mut *s;
        let mut free = (state.first_free..self.tasks.len()).filter(|&i| !state.taken[i]);
        let first = free.next()?;
        let pick = if self.any_order {
            self.first_idle(state, first, free).unwrap_or(first)
        } else {
            first
        };
        state.taken[pick] = true;
        while state.taken.get(state.first_free) == Some(&true) {
            state.first_free += 1;
        }
        for f in files_of(&self.tasks[pick]) {
            state.writers[f] += 1;
        }
        Some(pick)
    }

    /// The first task from `first` on whose files nobody writes and whose
    /// files have no earlier task left: each file's tasks still go out in
    /// file order, which the manifest checksums wait for
    /// (`Integrity::wait_turn`). A small file packed with the end of a busy
    /// one waits with it. Looks at most [`LOOK_AHEAD`] tasks ahead.
    fn first_idle(
        &self,
        state: &State,
        first: usize,
        rest: impl Iterator<Item = usize>,
    ) -> Option<usize> {
        let mut passed: HashSet<usize> = HashSet::new();
        for i in std::iter::once(first).chain(rest).take(LOOK_AHEAD) {
            let files = || files_of(&self.tasks[i]);
            if files().all(|f| state.writers[f] == 0 && !passed.contains(&f)) {
                return Some(i);
            }
            passed.extend(files());
        }
        None
    }

    /// Task `index` is written: its files are free for other workers.
    pub fn done(&self, index: usize) {
        let mut s = self.state.lock().unwrap();
        for f in files_of(&self.tasks[index]) {
            s.writers[f] -= 1;
        }
    }
}

/// The files a task writes, once each.
fn files_of(task: &Task) -> impl Iterator<Item = usize> + '_ {
    task.file_starts().map(|p| p.file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Piece;

    fn task(files: &[usize]) -> Task {
        Task {
            pieces: files
                .iter()
                .map(|&file| Piece {
                    file,
                    offset: 0,
                    len: 1,
                })
                .collect(),
        }
    }

    #[test]
    fn a_busy_file_is_passed_over_while_others_remain() {
        // Three chunks of file 0, then one of file 1, then small files 2 and 3.
        let tasks = [
            task(&[0]),
            task(&[0]),
            task(&[0]),
            task(&[1]),
            task(&[2, 3]),
        ];
        let q = Queue::new(&tasks, 4, true);
        assert_eq!(q.take(), Some(0));
        assert_eq!(q.take(), Some(3), "file 0 is being written");
        assert_eq!(q.take(), Some(4));
        // Only file 0 is left: its next chunk, though it is busy.
        assert_eq!(q.take(), Some(1));
        q.done(0);
        q.done(1);
        assert_eq!(q.take(), Some(2));
        assert_eq!(q.take(), None);
    }

    #[test]
    fn a_file_is_never_taken_ahead_of_its_earlier_tasks() {
        // Task 1 holds the end of file 0 and the start of file 1; tasks 2
        // and 3 the rest of file 1.
        let tasks = [
            task(&[0]),
            task(&[0, 1]),
            task(&[1]),
            task(&[1]),
            task(&[2]),
        ];
        let q = Queue::new(&tasks, 3, true);
        assert_eq!(q.take(), Some(0));
        // Not task 2: file 1's start (task 1) waits for file 0.
        assert_eq!(q.take(), Some(4));
        q.done(0);
        assert_eq!(q.take(), Some(1));
        assert_eq!(
            q.take(),
            Some(2),
            "file 1 is busy, but nothing else is left"
        );
    }

    #[test]
    fn in_order_when_the_sink_needs_it() {
        let tasks = [task(&[0]), task(&[0]), task(&[1])];
        let q = Queue::new(&tasks, 2, false);
        assert_eq!(
            (q.take(), q.take(), q.take(), q.take()),
            (Some(0), Some(1), Some(2), None)
        );
    }

    #[test]
    fn a_file_shared_by_two_tasks_counts_in_both() {
        // Task 0 ends with the start of file 1, task 1 holds its rest.
        let tasks = [task(&[0, 1]), task(&[1]), task(&[2])];
        let q = Queue::new(&tasks, 3, true);
        assert_eq!(q.take(), Some(0));
        assert_eq!(q.take(), Some(2));
        q.done(0);
        assert_eq!(q.take(), Some(1));
    }
}
