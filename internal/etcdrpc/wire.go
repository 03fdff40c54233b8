package etcdrpc

import (
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
)

// Message builds a protobuf message field by field. Every field given is
// written, zero or not: a oneof member must be present even when zero
// (Compare's create_revision = 0).
type Message []byte

// Bytes appends a bytes (or string, or embedded message) field.
func (m Message) Bytes(n protowire.Number, v []byte) Message {
	m = protowire.AppendTag(m, n, protowire.BytesType)
	return protowire.AppendBytes(m, v)
}

// String appends a string field.
func (m Message) String(n protowire.Number, v string) Message { return m.Bytes(n, []byte(v)) }

// Uint appends a varint field (uint64, int64 or an enum).
func (m Message) Uint(n protowire.Number, v uint64) Message {
	m = protowire.AppendTag(m, n, protowire.VarintType)
	return protowire.AppendVarint(m, v)
}

// Bool appends a bool field.
func (m Message) Bool(n protowire.Number, v bool) Message {
	return m.Uint(n, protowire.EncodeBool(v))
}

// Field is one field of a parsed message: Varint for varint fields, Data
// for length-delimited ones.
type Field struct {
	Num    protowire.Number
	Varint uint64
	Data   []byte
	Wire   protowire.Type
}

// Fields walks a message's fields in order; fields of other wire types
// are skipped.
func Fields(b []byte, f func(Field) error) error {
	for len(b) > 0 {
		n, t, l := protowire.ConsumeTag(b)
		if l < 0 {
			return fmt.Errorf("protobuf: %w", protowire.ParseError(l))
		}
		b = b[l:]
		fd := Field{Num: n, Wire: t}
		switch t {
		case protowire.VarintType:
			fd.Varint, l = protowire.ConsumeVarint(b)
		case protowire.BytesType:
			fd.Data, l = protowire.ConsumeBytes(b)
		default:
			l = protowire.ConsumeFieldValue(n, t, b)
		}
		if l < 0 {
			return fmt.Errorf("protobuf: field %d: %w", n, protowire.ParseError(l))
		}
		b = b[l:]
		if t != protowire.VarintType && t != protowire.BytesType {
			continue
		}
		if err := f(fd); err != nil {
			return err
		}
	}
	return nil
}
