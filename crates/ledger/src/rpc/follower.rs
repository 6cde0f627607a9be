//! Following the finalized chain block by block, checking that each block links to the last.

use super::client::{ClientError, LedgerClient};
use crate::block::Block;

/// Follows finalized blocks from a height, checking hash links (and certificates when served).
#[derive(Debug)]
pub struct Follower {
    next: u64,
    last: Option<[u8; 32]>,
}

impl Follower {
    /// Starts following at `height` (use 1 to see every block after genesis).
    pub fn new(height: u64) -> Self {
        Self { next: height, last: None }
    }

    /// Next height to fetch.
    pub fn next_height(&self) -> u64 {
        self.next
    }

    /// Fetches every newly finalized block (up to `max`), in order.
    pub fn poll(&mut self, client: &mut LedgerClient, max: usize) -> Result<Vec<Block>, ClientError> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some((b, _)) = client.block(self.next)? else { break };
            if let Some(prev) = self.last
                && b.header.parent != prev
            {
                return Err(ClientError::BadAnswer(format!(
                    "block {} does not link to its parent",
                    self.next
                )));
            }
            self.last = Some(b.id());
            self.next += 1;
            out.push(b);
        }
        Ok(out)
    }
}
