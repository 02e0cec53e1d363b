//! Struct layouts and variable addresses from DWARF (`.debug_*`, compressed or not).

use std::borrow::Cow;
use std::collections::HashMap;

use gimli::{AttributeValue, EndianSlice, LittleEndian};

use super::elf::Elf;
use super::error::{Malformed, PResult};

/// Structs whose layouts goroscope reads.
pub const STRUCTS: &[&str] = &[
    "runtime.g",
    "runtime.gobuf",
    "runtime.sudog",
    "context.cancelCtx",
];
/// Variables whose addresses goroscope reads.
pub const VARIABLES: &[&str] = &["runtime.allgs", "runtime.allglen"];

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StructLayout {
    pub size: Option<u64>,
    pub fields: HashMap<String, u64>,
}

#[derive(Debug, Default)]
pub struct DwarfFacts {
    pub structs: HashMap<String, StructLayout>,
    pub variables: HashMap<String, u64>,
}

fn gimli_err(e: gimli::Error) -> Malformed {
    Malformed::new(format!("DWARF: {e}"))
}

/// Reads the layouts of [`STRUCTS`] and addresses of [`VARIABLES`]. `Ok(None)` when the
/// binary has no DWARF.
pub fn read(elf: &Elf<'_>) -> PResult<Option<DwarfFacts>> {
    if !elf.has_dwarf() {
        return Ok(None);
    }
    let sections: gimli::DwarfSections<Cow<'_, [u8]>> = gimli::DwarfSections::load(|id| {
        elf.section_decompressed(id.name())
            .map(|s| s.unwrap_or(Cow::Borrowed(&[])))
    })?;
    let dwarf = sections.borrow(|s| EndianSlice::new(s, LittleEndian));

    let mut facts = DwarfFacts::default();
    let mut units = dwarf.units();
    while let Some(header) = units.next().map_err(gimli_err)? {
        let unit = dwarf.unit(header).map_err(gimli_err)?;
        let mut entries = unit.entries();
        // Depth of the struct whose members we are collecting, and its name.
        let mut depth: isize = 0;
        let mut collecting: Option<(isize, String)> = None;
        while let Some((delta, entry)) = entries.next_dfs().map_err(gimli_err)? {
            depth += delta;
            if let Some((d, _)) = &collecting {
                if depth <= *d {
                    collecting = None;
                }
            }
            let name = match entry.attr_value(gimli::DW_AT_name).map_err(gimli_err)? {
                Some(v) => dwarf
                    .attr_string(&unit, v)
                    .map_err(gimli_err)?
                    .to_string_lossy()
                    .into_owned(),
                None => continue,
            };
            match entry.tag() {
                gimli::DW_TAG_structure_type
                    if STRUCTS.contains(&name.as_str())
                        && !facts.structs.contains_key(&name)
                        && entry.has_children() =>
                {
                    let size = entry
                        .attr_value(gimli::DW_AT_byte_size)
                        .map_err(gimli_err)?
                        .and_then(|v| v.udata_value());
                    facts.structs.insert(
                        name.clone(),
                        StructLayout {
                            size,
                            fields: HashMap::new(),
                        },
                    );
                    collecting = Some((depth, name));
                }
                gimli::DW_TAG_member => {
                    if let Some((d, sname)) = &collecting {
                        if depth == d + 1 {
                            let off = match entry
                                .attr_value(gimli::DW_AT_data_member_location)
                                .map_err(gimli_err)?
                            {
                                Some(AttributeValue::Sdata(v)) => u64::try_from(v).ok(),
                                Some(v) => v.udata_value(),
                                None => None,
                            };
                            if let (Some(off), Some(s)) = (off, facts.structs.get_mut(sname)) {
                                s.fields.insert(name, off);
                            }
                        }
                    }
                }
                gimli::DW_TAG_variable if VARIABLES.contains(&name.as_str()) => {
                    if let Some(AttributeValue::Exprloc(expr)) =
                        entry.attr_value(gimli::DW_AT_location).map_err(gimli_err)?
                    {
                        let mut ops = expr.operations(unit.encoding());
                        if let Ok(Some(gimli::Operation::Address { address })) = ops.next() {
                            facts.variables.insert(name, address);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok(Some(facts))
}
