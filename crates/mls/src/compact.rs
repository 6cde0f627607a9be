//! A compact, self-describing binary encoding of the serde data model, used for the ratchet tree
//! (O(N) bytes, rewritten by OpenMLS on every commit).
//!
//! It mirrors the shapes `serde_json` produces (`None` as null, `Some(v)` as `v`, enums as a
//! variant name or a one-entry map), so that types round-trip through `deserialize_any` too,
//! but numbers are binary, structs are their field values in order (no field names: derived
//! `Deserialize` impls read a struct from a sequence), and a sequence of `u8` (every `Vec<u8>`
//! of keys, signatures, credentials) is one run of raw bytes instead of a JSON array of decimal
//! numbers.
//!
//! Value: `tag:u8` then
//! `0` null · `1` false · `2` true · `3` u64 (8 LE) · `4` i64 (8 LE) · `5` f64 (8 LE) ·
//! `6` string (len:u32 LE, UTF-8) · `7` sequence (count:u32 LE, values) ·
//! `8` map (count:u32 LE, key value pairs) · `9` bytes (len:u32 LE, raw), which reads back as a
//! sequence of u8 · `10` u8 (1 byte) · `11` struct (count:u32 LE, field values in order).

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use serde::ser::{self, Serialize};

const NULL: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
const U64: u8 = 3;
const I64: u8 = 4;
const F64: u8 = 5;
const STR: u8 = 6;
const SEQ: u8 = 7;
const MAP: u8 = 8;
const BYTES: u8 = 9;
const U8: u8 = 10;
/// A struct: its fields' values in order, like a sequence (count:u32 LE, values).
const STRUCT: u8 = 11;

/// An encoding or decoding failure.
#[derive(Debug, thiserror::Error)]
#[error("compact encoding: {0}")]
pub(crate) struct Error(String);

impl ser::Error for Error {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

impl de::Error for Error {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

type Result<T> = std::result::Result<T, Error>;

/// Encodes `value`.
pub(crate) fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let mut s = Ser { out: Vec::with_capacity(4096), u8s: 0, others: 0 };
    value.serialize(&mut s)?;
    Ok(s.out)
}

/// Decodes a value, which must use all of `bytes`.
pub(crate) fn from_slice<'de, T: de::Deserialize<'de>>(bytes: &'de [u8]) -> Result<T> {
    let mut d = De { input: bytes };
    let v = T::deserialize(&mut d)?;
    if !d.input.is_empty() {
        return Err(Error("trailing bytes".into()));
    }
    Ok(v)
}

fn len32(n: usize) -> Result<[u8; 4]> {
    u32::try_from(n).map(u32::to_le_bytes).map_err(|_| Error("too long".into()))
}

struct Ser {
    out: Vec<u8>,
    /// Values written by `serialize_u8` / by anything else, to recognise byte sequences.
    u8s: usize,
    others: usize,
}

impl Ser {
    fn tag(&mut self, t: u8) {
        self.others += 1;
        self.out.push(t);
    }

    fn str(&mut self, v: &str) -> Result<()> {
        self.tag(STR);
        self.out.extend_from_slice(&len32(v.len())?);
        self.out.extend_from_slice(v.as_bytes());
        Ok(())
    }

    /// Opens a sequence or map whose count is patched in when it ends.
    fn open(&mut self, tag: u8) -> Compound<'_> {
        self.tag(tag);
        let at = self.out.len();
        self.out.extend_from_slice(&[0; 4]);
        let (u8s, others) = (self.u8s, self.others);
        Compound { s: self, at, count: 0, u8s, others, seq: tag == SEQ }
    }

    /// `{ name: ... }`, as serde_json writes a non-unit enum variant.
    fn variant(&mut self, name: &str) -> Result<()> {
        self.tag(MAP);
        self.out.extend_from_slice(&1u32.to_le_bytes());
        self.str(name)
    }
}

struct Compound<'a> {
    s: &'a mut Ser,
    at: usize,
    count: usize,
    u8s: usize,
    others: usize,
    seq: bool,
}

impl Compound<'_> {
    fn close(self) -> Result<()> {
        let n = len32(self.count)?;
        let only_u8 = self.seq && self.s.others == self.others && self.s.u8s - self.u8s == self.count;
        if only_u8 && self.count > 0 {
            // Every element was a `U8 b` pair: rewrite the run as raw bytes.
            let start = self.at + 4;
            let raw: Vec<u8> = self.s.out[start..].iter().skip(1).step_by(2).copied().collect();
            self.s.out.truncate(self.at - 1);
            self.s.out.push(BYTES);
            self.s.out.extend_from_slice(&n);
            self.s.out.extend_from_slice(&raw);
            self.s.u8s = self.u8s;
            self.s.others = self.others + 1;
        } else {
            self.s.out[self.at..self.at + 4].copy_from_slice(&n);
        }
        Ok(())
    }
}

impl ser::SerializeSeq for Compound<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<()> {
        self.count += 1;
        v.serialize(&mut *self.s)
    }
    fn end(self) -> Result<()> {
        self.close()
    }
}

impl ser::SerializeTuple for Compound<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<()> {
        ser::SerializeSeq::serialize_element(self, v)
    }
    fn end(self) -> Result<()> {
        self.close()
    }
}

impl ser::SerializeTupleStruct for Compound<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<()> {
        ser::SerializeSeq::serialize_element(self, v)
    }
    fn end(self) -> Result<()> {
        self.close()
    }
}

impl ser::SerializeTupleVariant for Compound<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<()> {
        ser::SerializeSeq::serialize_element(self, v)
    }
    fn end(self) -> Result<()> {
        self.close()
    }
}

impl ser::SerializeMap for Compound<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<()> {
        self.count += 1;
        k.serialize(&mut *self.s)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<()> {
        v.serialize(&mut *self.s)
    }
    fn end(self) -> Result<()> {
        self.close()
    }
}

impl ser::SerializeStruct for Compound<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, _: &'static str, v: &T) -> Result<()> {
        // Fields in declaration order, without their names (derived `Deserialize` impls read
        // a struct from a sequence as well as from a map).
        self.count += 1;
        v.serialize(&mut *self.s)
    }
    fn end(self) -> Result<()> {
        self.close()
    }
}

impl ser::SerializeStructVariant for Compound<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, v: &T) -> Result<()> {
        ser::SerializeStruct::serialize_field(self, key, v)
    }
    fn end(self) -> Result<()> {
        self.close()
    }
}

impl<'a> ser::Serializer for &'a mut Ser {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Compound<'a>;
    type SerializeTuple = Compound<'a>;
    type SerializeTupleStruct = Compound<'a>;
    type SerializeTupleVariant = Compound<'a>;
    type SerializeMap = Compound<'a>;
    type SerializeStruct = Compound<'a>;
    type SerializeStructVariant = Compound<'a>;

    fn is_human_readable(&self) -> bool {
        // Same code paths in the entities as with serde_json.
        true
    }
    fn serialize_bool(self, v: bool) -> Result<()> {
        self.tag(if v { TRUE } else { FALSE });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<()> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i16(self, v: i16) -> Result<()> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i32(self, v: i32) -> Result<()> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i64(self, v: i64) -> Result<()> {
        if let Ok(u) = u64::try_from(v) {
            // serde_json reads a non-negative number back as u64.
            return self.serialize_u64(u);
        }
        self.tag(I64);
        self.out.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result<()> {
        self.u8s += 1;
        self.out.extend_from_slice(&[U8, v]);
        Ok(())
    }
    fn serialize_u16(self, v: u16) -> Result<()> {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u32(self, v: u32) -> Result<()> {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u64(self, v: u64) -> Result<()> {
        self.tag(U64);
        self.out.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> Result<()> {
        self.serialize_f64(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<()> {
        self.tag(F64);
        self.out.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<()> {
        self.str(v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_str(self, v: &str) -> Result<()> {
        self.str(v)
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<()> {
        self.tag(BYTES);
        self.out.extend_from_slice(&len32(v.len())?);
        self.out.extend_from_slice(v);
        Ok(())
    }
    fn serialize_none(self) -> Result<()> {
        self.tag(NULL);
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<()> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<()> {
        self.tag(NULL);
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<()> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Result<()> {
        self.str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, v: &T) -> Result<()> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        v: &T,
    ) -> Result<()> {
        self.variant(variant)?;
        v.serialize(self)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Compound<'a>> {
        Ok(self.open(SEQ))
    }
    fn serialize_tuple(self, _: usize) -> Result<Compound<'a>> {
        Ok(self.open(SEQ))
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Compound<'a>> {
        Ok(self.open(SEQ))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Compound<'a>> {
        self.variant(variant)?;
        Ok(self.open(SEQ))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Compound<'a>> {
        Ok(self.open(MAP))
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Compound<'a>> {
        Ok(self.open(STRUCT))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Compound<'a>> {
        self.variant(variant)?;
        Ok(self.open(STRUCT))
    }
}

struct De<'de> {
    input: &'de [u8],
}

impl<'de> De<'de> {
    fn take(&mut self, n: usize) -> Result<&'de [u8]> {
        if self.input.len() < n {
            return Err(Error("truncated".into()));
        }
        let (a, b) = self.input.split_at(n);
        self.input = b;
        Ok(a)
    }
    fn byte(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn peek(&self) -> Result<u8> {
        self.input.first().copied().ok_or_else(|| Error("truncated".into()))
    }
    fn u32(&mut self) -> Result<usize> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    fn eight(&mut self) -> Result<[u8; 8]> {
        let b = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(a)
    }
    fn str(&mut self) -> Result<&'de str> {
        let n = self.u32()?;
        std::str::from_utf8(self.take(n)?).map_err(|e| Error(e.to_string()))
    }
}

struct Items<'a, 'de> {
    de: &'a mut De<'de>,
    left: usize,
}

impl<'de> de::SeqAccess<'de> for Items<'_, 'de> {
    type Error = Error;
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

impl<'de> de::MapAccess<'de> for Items<'_, 'de> {
    type Error = Error;
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        seed.deserialize(&mut *self.de)
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

struct ByteItems<'de> {
    bytes: &'de [u8],
}

impl<'de> de::SeqAccess<'de> for ByteItems<'de> {
    type Error = Error;
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        match self.bytes.split_first() {
            None => Ok(None),
            Some((b, rest)) => {
                self.bytes = rest;
                seed.deserialize(IntoDeserializer::<Error>::into_deserializer(*b)).map(Some)
            }
        }
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.bytes.len())
    }
}

struct Variant<'a, 'de> {
    de: &'a mut De<'de>,
}

impl<'de> de::EnumAccess<'de> for Variant<'_, 'de> {
    type Error = Error;
    type Variant = Self;
    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self)> {
        let v = seed.deserialize(&mut *self.de)?;
        Ok((v, self))
    }
}

impl<'de> de::VariantAccess<'de> for Variant<'_, 'de> {
    type Error = Error;
    fn unit_variant(self) -> Result<()> {
        de::Deserialize::deserialize(&mut *self.de)
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value> {
        seed.deserialize(&mut *self.de)
    }
    fn tuple_variant<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value> {
        de::Deserializer::deserialize_any(&mut *self.de, visitor)
    }
    fn struct_variant<V: Visitor<'de>>(self, _: &'static [&'static str], visitor: V) -> Result<V::Value> {
        de::Deserializer::deserialize_any(&mut *self.de, visitor)
    }
}

impl<'de> de::Deserializer<'de> for &mut De<'de> {
    type Error = Error;

    fn is_human_readable(&self) -> bool {
        true
    }

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.byte()? {
            NULL => visitor.visit_unit(),
            FALSE => visitor.visit_bool(false),
            TRUE => visitor.visit_bool(true),
            U64 => visitor.visit_u64(u64::from_le_bytes(self.eight()?)),
            I64 => visitor.visit_i64(i64::from_le_bytes(self.eight()?)),
            F64 => visitor.visit_f64(f64::from_le_bytes(self.eight()?)),
            U8 => visitor.visit_u8(self.byte()?),
            STR => visitor.visit_borrowed_str(self.str()?),
            SEQ | STRUCT => {
                let left = self.u32()?;
                visitor.visit_seq(Items { de: self, left })
            }
            MAP => {
                let left = self.u32()?;
                visitor.visit_map(Items { de: self, left })
            }
            BYTES => {
                let n = self.u32()?;
                visitor.visit_seq(ByteItems { bytes: self.take(n)? })
            }
            t => Err(Error(format!("unknown tag {t}"))),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        if self.peek()? == NULL {
            self.byte()?;
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        match self.peek()? {
            STR => {
                self.byte()?;
                visitor.visit_enum(self.str()?.into_deserializer())
            }
            MAP => {
                self.byte()?;
                if self.u32()? != 1 {
                    return Err(Error("an enum variant is a map of one entry".into()));
                }
                visitor.visit_enum(Variant { de: self })
            }
            t => Err(Error(format!("tag {t} is not an enum variant"))),
        }
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        if self.peek()? == BYTES {
            self.byte()?;
            let n = self.u32()?;
            return visitor.visit_borrowed_bytes(self.take(n)?);
        }
        self.deserialize_any(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_bytes(visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        unit unit_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum E {
        Unit,
        New(Vec<u8>),
        Tup(u16, String),
        Rec { a: Option<u32>, b: Vec<Option<Vec<u8>>> },
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(untagged)]
    enum U {
        A(Inner),
        B(String),
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Inner {
        x: Vec<u8>,
        y: u32,
        e: E,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct S {
        bytes: Vec<u8>,
        empty: Vec<u8>,
        nums: Vec<u32>,
        neg: i64,
        f: f64,
        flag: bool,
        es: Vec<E>,
        nested: Vec<Vec<u8>>,
        map: std::collections::BTreeMap<String, u32>,
        unit: (),
        tuple: (u8, u64, Option<E>),
    }

    #[test]
    fn round_trips_like_json() {
        let s = S {
            bytes: (0..=255).collect(),
            empty: vec![],
            nums: vec![1, 300, 70000],
            neg: -5,
            f: 1.5,
            flag: true,
            es: vec![
                E::Unit,
                E::New(vec![1, 2]),
                E::Tup(7, "x".into()),
                E::Rec { a: None, b: vec![None, Some(vec![9])] },
            ],
            nested: vec![vec![1], vec![], vec![2, 3]],
            map: [("one".into(), 1), ("two".into(), 2)].into(),
            unit: (),
            tuple: (200, 1 << 40, Some(E::Unit)),
        };
        let enc = super::to_vec(&s).unwrap();
        assert_eq!(super::from_slice::<S>(&enc).unwrap(), s);
        // Through serde's buffered content (deserialize_any), as untagged enums read (a struct
        // variant of an untagged enum is not supported: serde reads those from maps only; the
        // tree has none).
        let u = vec![
            U::A(Inner { x: vec![1, 2, 3], y: 7, e: E::Rec { a: Some(1), b: vec![] } }),
            U::B("b".into()),
        ];
        assert_eq!(super::from_slice::<Vec<U>>(&super::to_vec(&u).unwrap()).unwrap(), u);
        assert!(enc.len() < serde_json::to_vec(&s).unwrap().len());
        assert!(super::from_slice::<S>(&enc[..enc.len() - 1]).is_err());
    }
}
