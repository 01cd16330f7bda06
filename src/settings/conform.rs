//! The fast check of strict decoding: is the input a part of a decoded value's canonical
//! form? Answered while serializing the value against the input, with no allocation,
//! descending only where the input has something. It only says yes or no: on a no,
//! `decode` builds the canonical form and finds where and why (and has the last word).

use std::fmt;

use serde::Serialize;
use serde::ser::{self, Impossible};
use serde_json::{Map, Number, Value};

/// Whether `input` is a part of `value`'s canonical form (what `serde_json::to_value`
/// makes of it): same kinds, equal scalars (numbers compared as numbers), every field of
/// `input` present there. `false` may be a false alarm (a type this check does not
/// follow, such as `i128`), never a false `true`.
pub(super) fn conforms<T: Serialize + ?Sized>(value: &T, input: &Value) -> bool {
    value.serialize(Conform(Some(input))).is_ok()
}

/// Numbers compared as numbers: `5` and `5.0` are the same.
pub(super) fn same_number(a: &Number, b: &Number) -> bool {
    match (a.as_u64(), b.as_u64(), a.as_i64(), b.as_i64()) {
        (Some(x), Some(y), _, _) => x == y,
        (_, _, Some(x), Some(y)) => x == y,
        _ => a.as_f64() == b.as_f64(),
    }
}

/// The input differs somewhere.
#[derive(Debug)]
struct Mismatch;

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the input is not in the canonical form")
    }
}

impl std::error::Error for Mismatch {}

impl ser::Error for Mismatch {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Mismatch
    }
}

type Checked = Result<(), Mismatch>;

/// Serializes a value against the input at the same place; `None`: the input has
/// nothing here, so anything goes.
struct Conform<'a>(Option<&'a Value>);

impl Conform<'_> {
    fn scalar(self, same: impl FnOnce(&Value) -> bool) -> Checked {
        match self.0 {
            Some(input) if !same(input) => Err(Mismatch),
            _ => Ok(()),
        }
    }

    fn number(self, n: Number) -> Checked {
        self.scalar(|v| matches!(v, Value::Number(input) if same_number(input, &n)))
    }

    fn float(self, x: f64) -> Checked {
        match Number::from_f64(x) {
            Some(n) => self.number(n),
            None => self.scalar(Value::is_null), // `to_value` writes NaN as `null`
        }
    }
}

impl<'a> Conform<'a> {
    /// The input under `variant` of an externally tagged enum: `{"variant": …}`.
    fn variant(self, variant: &str) -> Result<Conform<'a>, Mismatch> {
        match self.0 {
            None => Ok(Conform(None)),
            Some(Value::Object(fields)) if fields.len() == 1 => fields
                .get(variant)
                .map(|v| Conform(Some(v)))
                .ok_or(Mismatch),
            Some(_) => Err(Mismatch),
        }
    }

    fn seq(self) -> Result<Seq<'a>, Mismatch> {
        match self.0 {
            None => Ok(Seq { items: None, i: 0 }),
            Some(Value::Array(items)) => Ok(Seq {
                items: Some(items),
                i: 0,
            }),
            Some(_) => Err(Mismatch),
        }
    }

    fn fields(self) -> Result<Fields<'a>, Mismatch> {
        match self.0 {
            None => Ok(Fields::new(None)),
            Some(Value::Object(fields)) => Ok(Fields::new(Some(fields))),
            Some(_) => Err(Mismatch),
        }
    }
}

impl<'a> ser::Serializer for Conform<'a> {
    type Ok = ();
    type Error = Mismatch;
    type SerializeSeq = Seq<'a>;
    type SerializeTuple = Seq<'a>;
    type SerializeTupleStruct = Seq<'a>;
    type SerializeTupleVariant = Seq<'a>;
    type SerializeMap = Fields<'a>;
    type SerializeStruct = Fields<'a>;
    type SerializeStructVariant = Fields<'a>;

    fn serialize_bool(self, b: bool) -> Checked {
        self.scalar(|v| v.as_bool() == Some(b))
    }
    fn serialize_i8(self, n: i8) -> Checked {
        self.number(n.into())
    }
    fn serialize_i16(self, n: i16) -> Checked {
        self.number(n.into())
    }
    fn serialize_i32(self, n: i32) -> Checked {
        self.number(n.into())
    }
    fn serialize_i64(self, n: i64) -> Checked {
        self.number(n.into())
    }
    fn serialize_u8(self, n: u8) -> Checked {
        self.number(n.into())
    }
    fn serialize_u16(self, n: u16) -> Checked {
        self.number(n.into())
    }
    fn serialize_u32(self, n: u32) -> Checked {
        self.number(n.into())
    }
    fn serialize_u64(self, n: u64) -> Checked {
        self.number(n.into())
    }
    fn serialize_f32(self, x: f32) -> Checked {
        self.float(f64::from(x))
    }
    fn serialize_f64(self, x: f64) -> Checked {
        self.float(x)
    }
    fn serialize_char(self, c: char) -> Checked {
        self.serialize_str(c.encode_utf8(&mut [0; 4]))
    }
    fn serialize_str(self, s: &str) -> Checked {
        self.scalar(|v| v.as_str() == Some(s))
    }
    fn serialize_bytes(self, _: &[u8]) -> Checked {
        Err(Mismatch) // not in settings: let the slow path judge
    }
    fn serialize_none(self) -> Checked {
        self.scalar(Value::is_null)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Checked {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Checked {
        self.scalar(Value::is_null)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Checked {
        self.scalar(Value::is_null)
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Checked {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Checked {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Checked {
        value.serialize(self.variant(variant)?)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Seq<'a>, Mismatch> {
        self.seq()
    }
    fn serialize_tuple(self, _: usize) -> Result<Seq<'a>, Mismatch> {
        self.seq()
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Seq<'a>, Mismatch> {
        self.seq()
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Seq<'a>, Mismatch> {
        self.variant(variant)?.seq()
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Fields<'a>, Mismatch> {
        self.fields()
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Fields<'a>, Mismatch> {
        self.fields()
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Fields<'a>, Mismatch> {
        self.variant(variant)?.fields()
    }
}

/// The elements of a sequence, each against the input's element at its index.
struct Seq<'a> {
    items: Option<&'a Vec<Value>>,
    i: usize,
}

impl Seq<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Checked {
        if let Some(items) = self.items {
            value.serialize(Conform(Some(items.get(self.i).ok_or(Mismatch)?)))?;
        }
        self.i += 1;
        Ok(())
    }

    fn done(self) -> Checked {
        match self.items {
            Some(items) if items.len() != self.i => Err(Mismatch),
            _ => Ok(()),
        }
    }
}

impl ser::SerializeSeq for Seq<'_> {
    type Ok = ();
    type Error = Mismatch;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Checked {
        self.element(value)
    }
    fn end(self) -> Checked {
        self.done()
    }
}

impl ser::SerializeTuple for Seq<'_> {
    type Ok = ();
    type Error = Mismatch;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Checked {
        self.element(value)
    }
    fn end(self) -> Checked {
        self.done()
    }
}

impl ser::SerializeTupleStruct for Seq<'_> {
    type Ok = ();
    type Error = Mismatch;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Checked {
        self.element(value)
    }
    fn end(self) -> Checked {
        self.done()
    }
}

impl ser::SerializeTupleVariant for Seq<'_> {
    type Ok = ();
    type Error = Mismatch;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Checked {
        self.element(value)
    }
    fn end(self) -> Checked {
        self.done()
    }
}

/// The fields of a struct or map, each against the input's field of the same name; at
/// the end, every field of the input must have been met.
struct Fields<'a> {
    fields: Option<&'a Map<String, Value>>,
    met: usize,
    /// A map's value, found by its key (`serialize_key` comes first).
    next: Option<&'a Value>,
}

impl<'a> Fields<'a> {
    fn new(fields: Option<&'a Map<String, Value>>) -> Self {
        Fields {
            fields,
            met: 0,
            next: None,
        }
    }

    fn field<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Checked {
        if let Some(input) = self.fields.and_then(|f| f.get(key)) {
            self.met += 1;
            value.serialize(Conform(Some(input)))?;
        }
        Ok(())
    }

    fn done(self) -> Checked {
        match self.fields {
            Some(fields) if fields.len() != self.met => Err(Mismatch),
            _ => Ok(()),
        }
    }
}

impl ser::SerializeStruct for Fields<'_> {
    type Ok = ();
    type Error = Mismatch;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Checked {
        self.field(key, value)
    }
    fn end(self) -> Checked {
        self.done()
    }
}

impl ser::SerializeStructVariant for Fields<'_> {
    type Ok = ();
    type Error = Mismatch;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Checked {
        self.field(key, value)
    }
    fn end(self) -> Checked {
        self.done()
    }
}

impl ser::SerializeMap for Fields<'_> {
    type Ok = ();
    type Error = Mismatch;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Checked {
        self.next = match self.fields {
            Some(fields) => key.serialize(Key(fields))?,
            None => None,
        };
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Checked {
        if let Some(input) = self.next.take() {
            self.met += 1;
            value.serialize(Conform(Some(input)))?;
        }
        Ok(())
    }
    fn end(self) -> Checked {
        self.done()
    }
}

/// A map's key, looked up in the input's object (JSON keys are strings).
struct Key<'a>(&'a Map<String, Value>);

macro_rules! not_a_string_key {
    ($($method:ident($($arg:ty),*);)*) => {
        $(fn $method(self, $(_: $arg),*) -> Result<Option<&'a Value>, Mismatch> {
            Err(Mismatch)
        })*
    };
}

impl<'a> ser::Serializer for Key<'a> {
    type Ok = Option<&'a Value>;
    type Error = Mismatch;
    type SerializeSeq = Impossible<Self::Ok, Mismatch>;
    type SerializeTuple = Impossible<Self::Ok, Mismatch>;
    type SerializeTupleStruct = Impossible<Self::Ok, Mismatch>;
    type SerializeTupleVariant = Impossible<Self::Ok, Mismatch>;
    type SerializeMap = Impossible<Self::Ok, Mismatch>;
    type SerializeStruct = Impossible<Self::Ok, Mismatch>;
    type SerializeStructVariant = Impossible<Self::Ok, Mismatch>;

    fn serialize_str(self, key: &str) -> Result<Self::Ok, Mismatch> {
        Ok(self.0.get(key))
    }

    not_a_string_key! {
        serialize_bool(bool);
        serialize_i8(i8);
        serialize_i16(i16);
        serialize_i32(i32);
        serialize_i64(i64);
        serialize_u8(u8);
        serialize_u16(u16);
        serialize_u32(u32);
        serialize_u64(u64);
        serialize_f32(f32);
        serialize_f64(f64);
        serialize_char(char);
        serialize_bytes(&[u8]);
        serialize_none();
        serialize_unit();
        serialize_unit_struct(&'static str);
        serialize_unit_variant(&'static str, u32, &'static str);
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<Self::Ok, Mismatch> {
        Err(Mismatch)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        key: &T,
    ) -> Result<Self::Ok, Mismatch> {
        key.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<Self::Ok, Mismatch> {
        Err(Mismatch)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Mismatch> {
        Err(Mismatch)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Mismatch> {
        Err(Mismatch)
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Mismatch> {
        Err(Mismatch)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Mismatch> {
        Err(Mismatch)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Mismatch> {
        Err(Mismatch)
    }
    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, Mismatch> {
        Err(Mismatch)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Mismatch> {
        Err(Mismatch)
    }
}
