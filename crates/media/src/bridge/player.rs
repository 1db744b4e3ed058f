//! What a leg hears while it is in no mix: a queue of prompts, then hold music or silence.

use std::collections::VecDeque;

use super::prompt::{Prompt, PromptLibrary};

#[derive(Debug)]
pub(crate) struct Player {
    queue: VecDeque<Prompt>,
    current: Option<(Prompt, usize)>,
    music: bool,
    music_pos: usize,
    /// The end of the queue was reported.
    reported: bool,
    /// Echoed in the end report, so the engine can tell it from an earlier play's.
    pub(crate) seq: u32,
}

impl Player {
    /// Silent, with nothing to report.
    pub(crate) fn idle() -> Player {
        Player {
            queue: VecDeque::new(),
            current: None,
            music: false,
            music_pos: 0,
            reported: true,
            seq: 0,
        }
    }

    pub(crate) fn play(&mut self, prompts: Vec<Prompt>, then_music: bool, seq: u32) {
        self.queue = prompts.into();
        self.current = None;
        self.music = then_music;
        self.reported = false;
        self.seq = seq;
    }

    /// Fills `out` with one 20 ms frame at `rate`; returns true when the queue just ran
    /// out (once per [`play`](Self::play)).
    pub(crate) fn next_frame(
        &mut self,
        lib: &PromptLibrary,
        rate: u32,
        out: &mut Vec<i16>,
    ) -> bool {
        let n = (rate / 50) as usize;
        out.clear();
        let mut ended = false;
        while out.len() < n {
            if self.current.is_none() {
                match self.queue.pop_front() {
                    Some(p) => self.current = Some((p, 0)),
                    None => {
                        if !self.reported {
                            self.reported = true;
                            ended = true;
                        }
                        break;
                    }
                }
            }
            let Some((prompt, pos)) = self.current.as_mut() else {
                break;
            };
            let clip = lib.clip(*prompt).at(rate);
            let take = (n - out.len()).min(clip.len().saturating_sub(*pos));
            out.extend_from_slice(&clip[*pos..*pos + take]);
            *pos += take;
            if *pos >= clip.len() {
                self.current = None;
            }
        }
        if self.current.is_none() && self.queue.is_empty() && self.music {
            let music = lib.music().at(rate);
            while out.len() < n && !music.is_empty() {
                let pos = self.music_pos % music.len();
                let take = (n - out.len()).min(music.len() - pos);
                out.extend_from_slice(&music[pos..pos + take]);
                self.music_pos = pos + take;
            }
        }
        out.resize(n, 0);
        ended
    }
}
