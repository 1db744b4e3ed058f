//! The recorded announcements a bridge plays, at both mixing rates, loaded once.

use std::collections::HashMap;

use crate::resample::{Downsampler2x, Upsampler2x};
use crate::tone::read_wav;

/// Recorded announcements and tones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Prompt {
    /// Asks for the access code, ended by `#`.
    EnterAccessCode,
    /// Says the code keyed was wrong.
    WrongAccessCode,
    /// Before hanging up.
    Goodbye,
    /// Too many wrong codes from this line: try again later.
    TooManyAttempts,
    /// The room waits for its administrator.
    WaitForAdministrator,
    /// Nobody else is in the room yet.
    FirstParticipant,
    /// The administrator is in: the room opens.
    ConferenceStarting,
    /// The administrator left: the others wait again.
    AdministratorLeft,
    /// The administrator left and the room ends.
    ConferenceEnded,
    /// The room was deleted while the caller was in it.
    ConferenceClosed,
    /// The room is locked: the caller is not let in.
    ConferenceLocked,
    /// Someone joined the room.
    JoinTone,
    /// Someone left the room.
    LeaveTone,
}

impl Prompt {
    /// Every prompt, to load them all.
    pub const ALL: [Prompt; 13] = [
        Prompt::EnterAccessCode,
        Prompt::WrongAccessCode,
        Prompt::Goodbye,
        Prompt::TooManyAttempts,
        Prompt::WaitForAdministrator,
        Prompt::FirstParticipant,
        Prompt::ConferenceStarting,
        Prompt::AdministratorLeft,
        Prompt::ConferenceEnded,
        Prompt::ConferenceClosed,
        Prompt::ConferenceLocked,
        Prompt::JoinTone,
        Prompt::LeaveTone,
    ];

    /// Its file name, in the repository's `prompts/` and in an administrator's override
    /// directory.
    pub fn file_name(self) -> &'static str {
        match self {
            Prompt::EnterAccessCode => "enter-access-code.wav",
            Prompt::WrongAccessCode => "wrong-access-code.wav",
            Prompt::Goodbye => "goodbye.wav",
            Prompt::TooManyAttempts => "too-many-attempts.wav",
            Prompt::WaitForAdministrator => "wait-for-administrator.wav",
            Prompt::FirstParticipant => "first-participant.wav",
            Prompt::ConferenceStarting => "conference-starting.wav",
            Prompt::AdministratorLeft => "administrator-left.wav",
            Prompt::ConferenceEnded => "conference-ended.wav",
            Prompt::ConferenceClosed => "conference-closed.wav",
            Prompt::ConferenceLocked => "conference-locked.wav",
            Prompt::JoinTone => "join-tone.wav",
            Prompt::LeaveTone => "leave-tone.wav",
        }
    }
}

/// The file of the music played while a caller waits.
pub const HOLD_MUSIC: &str = "hold-music.wav";

/// Why a prompt could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromptError {
    /// Not a WAV file we can read.
    #[error("prompt {name}: {reason}")]
    Unreadable {
        /// The file name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Recorded at a rate the mixers do not run at.
    #[error("prompt {name}: {rate} Hz; use 8000 or 16000 Hz mono PCM WAV")]
    Rate {
        /// The file name.
        name: String,
        /// Its sample rate.
        rate: u32,
    },
}

/// One recording at 8 and 16 kHz, so that no leg resamples while it plays.
pub(crate) struct Clip {
    at8k: Vec<i16>,
    at16k: Vec<i16>,
}

impl Clip {
    pub(crate) fn at(&self, rate: u32) -> &[i16] {
        if rate == 16000 {
            &self.at16k
        } else {
            &self.at8k
        }
    }

    fn from_wav(bytes: &[u8], name: &str) -> Result<Clip, PromptError> {
        let (rate, pcm) = read_wav(bytes).map_err(|e| PromptError::Unreadable {
            name: name.to_owned(),
            reason: e.to_string(),
        })?;
        let (at8k, at16k) = match rate {
            8000 => {
                let mut up = Vec::with_capacity(pcm.len() * 2);
                Upsampler2x::new().process(&pcm, &mut up);
                (pcm, up)
            }
            16000 => {
                let mut down = Vec::with_capacity(pcm.len() / 2);
                Downsampler2x::new().process(&pcm, &mut down);
                (down, pcm)
            }
            rate => {
                return Err(PromptError::Rate {
                    name: name.to_owned(),
                    rate,
                })
            }
        };
        Ok(Clip { at8k, at16k })
    }
}

/// The prompts built into the binary (made by `scripts/make-prompts.sh`).
fn embedded(name: &str) -> Option<&'static [u8]> {
    macro_rules! prompt {
        ($file:literal) => {
            include_bytes!(concat!("../../../../prompts/", $file)).as_slice()
        };
    }
    Some(match name {
        "enter-access-code.wav" => prompt!("enter-access-code.wav"),
        "wrong-access-code.wav" => prompt!("wrong-access-code.wav"),
        "goodbye.wav" => prompt!("goodbye.wav"),
        "too-many-attempts.wav" => prompt!("too-many-attempts.wav"),
        "wait-for-administrator.wav" => prompt!("wait-for-administrator.wav"),
        "first-participant.wav" => prompt!("first-participant.wav"),
        "conference-starting.wav" => prompt!("conference-starting.wav"),
        "administrator-left.wav" => prompt!("administrator-left.wav"),
        "conference-ended.wav" => prompt!("conference-ended.wav"),
        "conference-closed.wav" => prompt!("conference-closed.wav"),
        "conference-locked.wav" => prompt!("conference-locked.wav"),
        "join-tone.wav" => prompt!("join-tone.wav"),
        "leave-tone.wav" => prompt!("leave-tone.wav"),
        "hold-music.wav" => prompt!("hold-music.wav"),
        _ => return None,
    })
}

/// Every prompt and the hold music, shared by the bridges of a process.
pub struct PromptLibrary {
    clips: HashMap<Prompt, Clip>,
    music: Clip,
}

impl PromptLibrary {
    /// The built-in recordings, except where `override_of(file name)` returns the bytes of
    /// the administrator's own (the shell reads them from the data directory: this crate
    /// opens no file).
    pub fn load(
        override_of: impl Fn(&str) -> Option<Vec<u8>>,
    ) -> Result<PromptLibrary, PromptError> {
        let read = |name: &str| match override_of(name) {
            Some(bytes) => Clip::from_wav(&bytes, name),
            None => Clip::from_wav(embedded(name).unwrap_or_default(), name),
        };
        let mut clips = HashMap::new();
        for p in Prompt::ALL {
            clips.insert(p, read(p.file_name())?);
        }
        Ok(PromptLibrary {
            clips,
            music: read(HOLD_MUSIC)?,
        })
    }

    /// The built-in recordings only.
    pub fn builtin() -> PromptLibrary {
        Self::load(|_| None).expect("the built-in prompts are valid WAV files")
    }

    pub(crate) fn clip(&self, p: Prompt) -> &Clip {
        &self.clips[&p]
    }

    pub(crate) fn music(&self) -> &Clip {
        &self.music
    }

    /// How long `p` plays.
    pub fn duration(&self, p: Prompt) -> std::time::Duration {
        std::time::Duration::from_millis(self.clips[&p].at8k.len() as u64 / 8)
    }
}
