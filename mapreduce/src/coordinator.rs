//! Which task runs where: sans-IO, with time passed in, so a test can drive
//! it tick by tick and a runner can keep its state wherever it likes.

/// Map or reduce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TaskKind {
    /// Reads one input split.
    Map,
    /// Merges one partition of every map's output.
    Reduce,
}

/// One task of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId {
    /// Map or reduce.
    pub kind: TaskKind,
    /// The split (map) or partition (reduce).
    pub index: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TaskState {
    Idle,
    InProgress { worker: u64, since_ms: u64 },
    Completed,
}

/// What a worker asking for work gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Assignment {
    /// Run this task.
    Run(TaskId),
    /// Nothing to run now (every task is running, or reduces wait for
    /// maps); ask again shortly.
    Wait,
    /// The job's tasks are all completed.
    Done,
}

/// The task table of one job.
#[derive(Clone, Debug)]
pub struct Coordinator {
    maps: Vec<TaskState>,
    reduces: Vec<TaskState>,
    task_timeout_ms: u64,
    assignments: u64,
}

impl Coordinator {
    /// `maps` map tasks and `reduces` reduce tasks, re-issued when not
    /// completed within `task_timeout_ms`.
    pub fn new(maps: u32, reduces: u32, task_timeout_ms: u64) -> Coordinator {
        Coordinator {
            maps: vec![TaskState::Idle; maps as usize],
            reduces: vec![TaskState::Idle; reduces as usize],
            task_timeout_ms,
            assignments: 0,
        }
    }

    /// A task for `worker` at time `now_ms`: an idle one, or one whose
    /// worker has held it past the timeout. Reduce tasks only once every
    /// map task completed. Healthy running tasks are never handed out twice.
    pub fn request(&mut self, worker: u64, now_ms: u64) -> Assignment {
        self.request_preferring(worker, now_ms, &|_| true)
    }

    /// As [`request`](Self::request), but of the tasks that could be handed
    /// out, one that `is_local` says has its input on the worker's node
    /// goes first (locality); a remote one only when no local one is free.
    pub fn request_preferring(
        &mut self,
        worker: u64,
        now_ms: u64,
        is_local: &dyn Fn(TaskId) -> bool,
    ) -> Assignment {
        let phase = if self.maps_done() < self.maps.len() {
            TaskKind::Map
        } else if self.reduces_done() < self.reduces.len() {
            TaskKind::Reduce
        } else {
            return Assignment::Done;
        };
        let timeout = self.task_timeout_ms;
        let tasks = match phase {
            TaskKind::Map => &mut self.maps,
            TaskKind::Reduce => &mut self.reduces,
        };
        let can_go = |t: &TaskState| match t {
            TaskState::Idle => true,
            TaskState::InProgress { since_ms, .. } => now_ms.saturating_sub(*since_ms) >= timeout,
            TaskState::Completed => false,
        };
        let id = |index: usize| TaskId {
            kind: phase,
            index: index as u32,
        };
        let free = (0..tasks.len())
            .find(|&i| can_go(&tasks[i]) && is_local(id(i)))
            .or_else(|| tasks.iter().position(can_go));
        match free {
            Some(index) => {
                tasks[index] = TaskState::InProgress {
                    worker,
                    since_ms: now_ms,
                };
                self.assignments += 1;
                Assignment::Run(TaskId {
                    kind: phase,
                    index: index as u32,
                })
            }
            None => Assignment::Wait,
        }
    }

    /// Records that `task` completed; true if this is its first completion
    /// (a late finisher of a re-issued task is ignored).
    pub fn complete(&mut self, task: TaskId) -> bool {
        let Some(state) = self.state_mut(task) else {
            return false;
        };
        if *state == TaskState::Completed {
            return false;
        }
        *state = TaskState::Completed;
        true
    }

    /// Makes `task` idle again at once (its worker reported a failure, or
    /// its map output was lost), unless it already completed.
    pub fn reset(&mut self, task: TaskId) {
        if let Some(state) = self.state_mut(task) {
            if *state != TaskState::Completed {
                *state = TaskState::Idle;
            }
        }
    }

    /// Makes a completed `task` idle again: its output was lost (the node
    /// holding a map's runs is gone). Reduces wait again until it is redone.
    pub fn lose(&mut self, task: TaskId) {
        if let Some(state) = self.state_mut(task) {
            *state = TaskState::Idle;
        }
    }

    /// True if `task` completed.
    pub fn is_completed(&self, task: TaskId) -> bool {
        let tasks = match task.kind {
            TaskKind::Map => &self.maps,
            TaskKind::Reduce => &self.reduces,
        };
        tasks.get(task.index as usize) == Some(&TaskState::Completed)
    }

    /// The worker running `task`, if it is running.
    pub fn worker_of(&self, task: TaskId) -> Option<u64> {
        let tasks = match task.kind {
            TaskKind::Map => &self.maps,
            TaskKind::Reduce => &self.reduces,
        };
        match tasks.get(task.index as usize) {
            Some(TaskState::InProgress { worker, .. }) => Some(*worker),
            _ => None,
        }
    }

    fn state_mut(&mut self, task: TaskId) -> Option<&mut TaskState> {
        match task.kind {
            TaskKind::Map => self.maps.get_mut(task.index as usize),
            TaskKind::Reduce => self.reduces.get_mut(task.index as usize),
        }
    }

    /// Map tasks completed.
    pub fn maps_done(&self) -> usize {
        self.maps
            .iter()
            .filter(|t| **t == TaskState::Completed)
            .count()
    }

    /// Reduce tasks completed.
    pub fn reduces_done(&self) -> usize {
        self.reduces
            .iter()
            .filter(|t| **t == TaskState::Completed)
            .count()
    }

    /// Map tasks in all.
    pub fn map_count(&self) -> usize {
        self.maps.len()
    }

    /// Reduce tasks in all.
    pub fn reduce_count(&self) -> usize {
        self.reduces.len()
    }

    /// Tasks handed out so far, re-issues included.
    pub fn assignments(&self) -> u64 {
        self.assignments
    }

    /// True once every task completed.
    pub fn is_done(&self) -> bool {
        self.maps_done() == self.maps.len() && self.reduces_done() == self.reduces.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(index: u32) -> TaskId {
        TaskId {
            kind: TaskKind::Map,
            index,
        }
    }

    fn reduce(index: u32) -> TaskId {
        TaskId {
            kind: TaskKind::Reduce,
            index,
        }
    }

    #[test]
    fn each_task_once_then_reduces_after_every_map() {
        let mut c = Coordinator::new(2, 1, 1_000);
        assert_eq!(c.request(1, 0), Assignment::Run(map(0)));
        assert_eq!(c.request(2, 0), Assignment::Run(map(1)));
        // Both maps run and are healthy: nobody gets a copy, nor a reduce.
        assert_eq!(c.request(3, 10), Assignment::Wait);
        assert!(c.complete(map(0)));
        assert_eq!(c.request(3, 20), Assignment::Wait);
        assert!(c.complete(map(1)));
        assert_eq!(c.request(3, 30), Assignment::Run(reduce(0)));
        assert!(c.complete(reduce(0)));
        assert_eq!(c.request(3, 40), Assignment::Done);
        assert_eq!(c.assignments(), 3);
    }

    #[test]
    fn a_task_past_its_timeout_goes_to_the_next_worker_and_the_late_finish_is_ignored() {
        let mut c = Coordinator::new(1, 1, 1_000);
        assert_eq!(c.request(1, 0), Assignment::Run(map(0)));
        assert_eq!(c.request(2, 999), Assignment::Wait);
        assert_eq!(c.request(2, 1_000), Assignment::Run(map(0)));
        assert_eq!(c.worker_of(map(0)), Some(2));
        assert!(c.complete(map(0)));
        assert!(!c.complete(map(0)), "the first worker's late finish");
        assert_eq!(c.maps_done(), 1);
    }

    #[test]
    fn a_worker_gets_a_task_local_to_it_first() {
        let mut c = Coordinator::new(3, 1, 1_000);
        let only_map_2 = |t: TaskId| t == map(2);
        assert_eq!(
            c.request_preferring(1, 0, &only_map_2),
            Assignment::Run(map(2))
        );
        // No local task is left: a remote one rather than none.
        assert_eq!(
            c.request_preferring(1, 0, &only_map_2),
            Assignment::Run(map(0))
        );
    }

    #[test]
    fn a_lost_map_output_sends_reduces_back_to_waiting_for_it() {
        let mut c = Coordinator::new(1, 2, 60_000);
        assert_eq!(c.request(1, 0), Assignment::Run(map(0)));
        assert!(c.complete(map(0)));
        assert_eq!(c.request(1, 1), Assignment::Run(reduce(0)));
        c.lose(map(0));
        assert!(!c.is_completed(map(0)));
        assert_eq!(
            c.request(2, 2),
            Assignment::Run(map(0)),
            "the map runs again"
        );
        assert_eq!(
            c.request(3, 3),
            Assignment::Wait,
            "no reduce before it is redone"
        );
        assert!(c.complete(map(0)));
        assert_eq!(c.request(3, 4), Assignment::Run(reduce(1)));
    }

    #[test]
    fn a_reset_task_is_handed_out_again_at_once() {
        let mut c = Coordinator::new(1, 0, 60_000);
        assert_eq!(c.request(1, 0), Assignment::Run(map(0)));
        c.reset(map(0));
        assert_eq!(c.request(2, 1), Assignment::Run(map(0)));
        assert!(c.complete(map(0)));
        c.reset(map(0));
        assert_eq!(
            c.request(3, 2),
            Assignment::Done,
            "a completed task stays so"
        );
    }
}
