//! Pure Chord: 256-bit ids, ring intervals, the corrected (Zave) protocol state machine, replica
//! placement, and a deterministic simulator. Placeholder; see issue "Chord core".
