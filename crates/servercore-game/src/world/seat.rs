//! A player's seat in the world: what its player actor and the region
//! owning it share.
//!
//! The player actor (on whichever worker runs it) applies the movement
//! rules and drops each accepted move into the seat's inbox; the region
//! that owns the player takes the inbox at the start of the next tick. A
//! leave is a request in the same inbox, so it is applied after every move
//! sent before it. This module owns the inbox and its bound, and the rule
//! that a seat the world has let go of answers a leave at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use servercore::SessionHandle;
use servercore_protocol::PosInfo;

use super::grid::Cell;
use super::{Identity, Left};

/// No cell (a packed [`Cell`] is never this).
const NO_CELL: u64 = u64::MAX;

fn pack(cell: Cell) -> u64 {
    (u64::from(cell.0) << 32) | u64::from(cell.1)
}

fn unpack(packed: u64) -> Option<Cell> {
    (packed != NO_CELL).then_some(((packed >> 32) as u32, packed as u32))
}

/// One accepted move waiting for the next tick.
#[derive(Debug, Clone, Copy)]
pub(super) struct MoveInput {
    /// Where the player stands after it (clamped and cut already).
    pub pos: PosInfo,
    /// The mover's `C_MOVE.client_time_us`, copied into its `S_MOVE`.
    pub client_time_us: u64,
}

/// A request to take the player out of the world.
pub(super) struct LeaveRequest {
    /// Send `S_LEAVE_GAME` (a `C_LEAVE_GAME`, not a disconnect).
    pub tell: bool,
    /// Called once the world has let the player go.
    pub left: Left,
}

/// What the region takes from a seat at the start of a tick.
pub(super) struct Taken {
    pub moves: Vec<MoveInput>,
    /// The player leaves (or was replaced by a newer session of itself).
    pub leave: Option<Option<LeaveRequest>>,
}

/// The moves and the leave waiting for a seat's next tick.
#[derive(Default)]
struct InboxState {
    moves: Vec<MoveInput>,
    leave: Option<LeaveRequest>,
    /// A newer session of the same player entered: leave without a word.
    evicted: bool,
    /// The world has let the seat go: nothing more is taken.
    gone: bool,
}

/// A seat's inbox: bounded moves, then at most one leave.
pub(super) struct Inbox {
    state: Mutex<InboxState>,
    max_moves: usize,
}

impl Inbox {
    pub fn new(max_moves: usize) -> Inbox {
        Inbox {
            state: Mutex::default(),
            max_moves: max_moves.max(1),
        }
    }

    pub fn push_move(&self, input: MoveInput) -> Result<(), MoveRefused> {
        let mut state = self.state.lock();
        if state.gone || state.leave.is_some() || state.evicted {
            return Err(MoveRefused::Gone);
        }
        if state.moves.len() >= self.max_moves {
            return Err(MoveRefused::Full);
        }
        state.moves.push(input);
        Ok(())
    }

    /// Keeps `request` for the next tick, or hands it back if the seat is
    /// gone (or already leaving).
    pub fn leave(&self, request: LeaveRequest) -> Option<LeaveRequest> {
        let mut state = self.state.lock();
        if state.gone || state.leave.is_some() {
            return Some(request);
        }
        state.leave = Some(request);
        None
    }

    pub fn evict(&self) {
        self.state.lock().evicted = true;
    }

    /// Whether a newer seat of the player evicted this one (also after its
    /// leave was taken).
    pub fn is_evicted(&self) -> bool {
        self.state.lock().evicted
    }

    pub fn take(&self) -> Taken {
        let mut state = self.state.lock();
        let moves = std::mem::take(&mut state.moves);
        let leave = if state.gone {
            None
        } else if let Some(request) = state.leave.take() {
            state.gone = true;
            Some(Some(request))
        } else if state.evicted {
            state.gone = true;
            Some(None)
        } else {
            None
        };
        Taken { moves, leave }
    }

    pub fn release(&self) -> Option<LeaveRequest> {
        let mut state = self.state.lock();
        state.gone = true;
        state.moves.clear();
        state.leave.take()
    }
}

/// A player in the world, as its player actor and its region see it.
pub struct Seat {
    /// The player's id (the `object_id` of its spawns and moves).
    pub player_id: u64,
    /// The account it plays for ("" for a guest): its saves go through
    /// that account's database thread.
    pub(super) account: Arc<str>,
    pub(super) identity: Arc<Identity>,
    pub(super) handle: SessionHandle,
    inbox: Inbox,
    /// The cell it entered in (packed; for the border's view).
    entered_cell: AtomicU64,
    /// Handed over to another node's zone: the cell it stood in then
    /// (packed), or [`NO_CELL`].
    transfer_cell: AtomicU64,
    /// Handed over, and another node said the account logged in there.
    arrived_elsewhere: std::sync::atomic::AtomicBool,
    /// Handed over to this node: the cell another node showed it in at
    /// the end of the tick before this node took it (packed), until its
    /// arrival in the world takes it.
    shown_at: AtomicU64,
}

/// Why a move was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveRefused {
    /// The player already has the most moves waiting for the next tick.
    Full,
    /// The player has left (or is leaving) the world.
    Gone,
}

impl Seat {
    /// The seat of player `player_id` shown as `identity`, played through
    /// `handle`; at most `max_pending_moves` moves wait for a tick.
    pub(super) fn new(
        player_id: u64,
        account: Arc<str>,
        identity: Arc<Identity>,
        handle: SessionHandle,
        max_pending_moves: usize,
    ) -> Seat {
        Seat {
            player_id,
            account,
            identity,
            handle,
            inbox: Inbox::new(max_pending_moves),
            entered_cell: AtomicU64::new(NO_CELL),
            transfer_cell: AtomicU64::new(NO_CELL),
            arrived_elsewhere: std::sync::atomic::AtomicBool::new(false),
            shown_at: AtomicU64::new(NO_CELL),
        }
    }

    /// The account it plays for ("" for a guest).
    pub fn account(&self) -> &str {
        &self.account
    }

    /// The session playing it.
    pub fn handle(&self) -> &SessionHandle {
        &self.handle
    }

    pub(super) fn set_entered_cell(&self, cell: Cell) {
        self.entered_cell.store(pack(cell), Ordering::Release);
    }

    /// The cell it entered the world in.
    pub(super) fn entered_cell(&self) -> Option<Cell> {
        unpack(self.entered_cell.load(Ordering::Acquire))
    }

    /// Starts handing the player over to another node's zone, standing in
    /// `cell`; false if that began already.
    pub(super) fn begin_transfer(&self, cell: Cell) -> bool {
        self.transfer_cell
            .compare_exchange(NO_CELL, pack(cell), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Another node has the player handed over now (its account logged in
    /// there): the hand-over ends even where that node's border cells do
    /// not show it here.
    pub fn note_arrived_elsewhere(&self) {
        self.arrived_elsewhere.store(true, Ordering::Release);
    }

    /// Notes where another node showed the player when this node's border
    /// view stopped showing that copy (its arrival may be a tick later).
    pub(super) fn set_shown_at(&self, cell: Cell) {
        self.shown_at.store(pack(cell), Ordering::Release);
    }

    /// Where another node showed it last, once (see [`Seat::set_shown_at`]).
    pub(super) fn take_shown_at(&self) -> Option<Cell> {
        unpack(self.shown_at.swap(NO_CELL, Ordering::AcqRel))
    }

    /// Whether [`Seat::note_arrived_elsewhere`] was called.
    pub(super) fn arrived_elsewhere(&self) -> bool {
        self.arrived_elsewhere.load(Ordering::Acquire)
    }

    /// The cell it stood in when its hand-over began, if it is being
    /// handed over.
    pub fn transferring(&self) -> Option<Cell> {
        unpack(self.transfer_cell.load(Ordering::Acquire))
    }

    /// Queues an accepted move for the next tick.
    pub fn push_move(&self, pos: PosInfo, client_time_us: u64) -> Result<(), MoveRefused> {
        self.inbox.push_move(MoveInput {
            pos: PosInfo {
                object_id: self.player_id,
                ..pos
            },
            client_time_us,
        })
    }

    /// Asks the world to let the player go at the next tick (`left` is
    /// called then); if it already has, `left` is called at once.
    pub fn leave(&self, tell: bool, left: Left) {
        if let Some(request) = self.inbox.leave(LeaveRequest { tell, left }) {
            (request.left)();
        }
    }

    /// A newer session of this player entered the world: this one leaves at
    /// the next tick, silently.
    /// Whether a newer seat of the player took this one's place.
    pub(super) fn is_evicted(&self) -> bool {
        self.inbox.is_evicted()
    }

    pub(super) fn evict(&self) {
        self.inbox.evict();
    }

    /// Takes what waits for this tick; a leave (or eviction) marks the seat
    /// gone, so later requests are answered at once.
    pub(super) fn take(&self) -> Taken {
        self.inbox.take()
    }

    /// Marks the seat gone without a tick (the world is stopping); returns
    /// a leave request that was waiting.
    pub(super) fn release(&self) -> Option<LeaveRequest> {
        self.inbox.release()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    fn input(x: f32, client_time_us: u64) -> MoveInput {
        MoveInput {
            pos: PosInfo {
                x,
                ..PosInfo::default()
            },
            client_time_us,
        }
    }

    #[test]
    fn moves_are_bounded_until_taken_then_a_leave_ends_them() {
        let inbox = Inbox::new(3);
        for t in 0..3 {
            assert_eq!(inbox.push_move(input(t as f32, t)), Ok(()));
        }
        assert_eq!(inbox.push_move(input(9.0, 9)), Err(MoveRefused::Full));
        let taken = inbox.take();
        let kept: Vec<(f32, u64)> = taken
            .moves
            .iter()
            .map(|m| (m.pos.x, m.client_time_us))
            .collect();
        assert_eq!(kept, [(0.0, 0), (1.0, 1), (2.0, 2)]);
        assert!(taken.leave.is_none());
        assert_eq!(
            inbox.push_move(input(4.0, 4)),
            Ok(()),
            "room again after a tick"
        );
        let (left_tx, left_rx) = mpsc::channel();
        let tx = left_tx.clone();
        let first = LeaveRequest {
            tell: true,
            left: Box::new(move || tx.send(1).unwrap()),
        };
        assert!(inbox.leave(first).is_none(), "kept for the tick");
        assert_eq!(inbox.push_move(input(5.0, 5)), Err(MoveRefused::Gone));
        let taken = inbox.take();
        assert_eq!(taken.moves.len(), 1, "the move sent before the leave");
        let request = taken.leave.expect("a leave").expect("asked, not evicted");
        assert!(request.tell);
        (request.left)();
        // Gone: a second leave comes straight back.
        let second = LeaveRequest {
            tell: false,
            left: Box::new(move || left_tx.send(2).unwrap()),
        };
        let back = inbox.leave(second).expect("handed back");
        (back.left)();
        assert_eq!(left_rx.try_iter().collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn an_evicted_seat_leaves_silently_once() {
        let inbox = Inbox::new(4);
        inbox.push_move(input(1.0, 1)).unwrap();
        inbox.evict();
        assert_eq!(inbox.push_move(input(2.0, 2)), Err(MoveRefused::Gone));
        let taken = inbox.take();
        assert!(matches!(taken.leave, Some(None)));
        assert!(inbox.take().leave.is_none(), "taken once");
    }
}
