//! Pure RECAST step-archive codec over fixed-size blocks, pointer selection and a durability
//! simulator. Placeholder: built under the entanglement issue.
