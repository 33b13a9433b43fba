// Command go-reader checks `.netsy` files the way the original Go implementation does — Go's
// protobuf runtime (generated code for the original schema, which lacks our sub_revision field)
// and klauspost/compress zstd — and can rewrite a file with a Go writer.
//
// Written for Netsy in Rust from the documented format (docs/design/0004-storage.md#data-file-format);
// it is a test tool, not a copy of the original. Usage:
//
//	go-reader check FILE...         validate; print each record as protobuf JSON
//	go-reader rewrite IN OUT        validate IN, write the same header fields and records to OUT
//	go-reader expect-invalid FILE   exit 0 only if FILE fails validation
package main

import (
	"bufio"
	"errors"
	"fmt"
	"hash/crc64"
	"io"
	"os"

	"github.com/klauspost/compress/zstd"
	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	pb "netsycompat/pb"
)

var table = crc64.MakeTable(crc64.ECMA)

// crcOf is the CRC of msg marshalled with its crc field cleared (Go's default Marshal).
func crcOf(msg proto.Message, clear func(proto.Message)) (uint64, []byte, error) {
	c := proto.Clone(msg)
	clear(c)
	data, err := proto.Marshal(c)
	if err != nil {
		return 0, nil, err
	}
	return crc64.Checksum(data, table), data, nil
}

type file struct {
	header  *pb.FileHeader
	records []*pb.Record
	footer  *pb.FileFooter
}

func read(path string) (*file, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	buf := bufio.NewReader(f)
	h := &pb.FileHeader{}
	if err := protodelim.UnmarshalFrom(buf, h); err != nil {
		return nil, fmt.Errorf("header: %w", err)
	}
	if h.Compression == pb.FileCompression_COMPRESSION_UNKNOWN {
		return nil, errors.New("unknown compression type in header")
	}
	sum, _, err := crcOf(h, func(m proto.Message) { m.(*pb.FileHeader).Crc = 0 })
	if err != nil || sum != h.Crc {
		return nil, fmt.Errorf("header CRC %d mismatch - expected %d (%v)", sum, h.Crc, err)
	}
	var body io.Reader = buf
	if h.Compression == pb.FileCompression_COMPRESSION_ZSTD {
		dec, err := zstd.NewReader(buf)
		if err != nil {
			return nil, err
		}
		defer dec.Close()
		body = dec
	}
	rd := bufio.NewReader(body)
	out := &file{header: h}
	running := crc64.New(table)
	var first, last int64
	for i := int64(0); i < h.RecordsCount; i++ {
		r := &pb.Record{}
		if err := protodelim.UnmarshalFrom(rd, r); err != nil {
			if errors.Is(err, io.EOF) {
				return nil, errors.New("unexpected end of file")
			}
			return nil, fmt.Errorf("record %d: %w", i, err)
		}
		sum, data, err := crcOf(r, func(m proto.Message) { m.(*pb.Record).Crc = 0 })
		if err != nil || sum != r.Crc {
			return nil, fmt.Errorf("record %d CRC %d mismatch - expected %d (%v)", i, sum, r.Crc, err)
		}
		running.Write(data)
		if i == 0 {
			first = r.Revision
		}
		last = r.Revision
		out.records = append(out.records, r)
	}
	ft := &pb.FileFooter{}
	if err := protodelim.UnmarshalFrom(rd, ft); err != nil {
		return nil, fmt.Errorf("footer: %w", err)
	}
	sum, _, err = crcOf(ft, func(m proto.Message) { m.(*pb.FileFooter).Crc = 0 })
	if err != nil || sum != ft.Crc {
		return nil, fmt.Errorf("footer CRC %d mismatch - expected %d (%v)", sum, ft.Crc, err)
	}
	if running.Sum64() != ft.RecordsCrc {
		return nil, fmt.Errorf("records CRC %d mismatch - expected %d", running.Sum64(), ft.RecordsCrc)
	}
	if first != ft.FirstRevision || last != ft.LastRevision {
		return nil, fmt.Errorf("revisions %d..%d do not match footer %d..%d", first, last, ft.FirstRevision, ft.LastRevision)
	}
	out.footer = ft
	return out, nil
}

func write(path string, in *file) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := bufio.NewWriter(f)
	h := proto.Clone(in.header).(*pb.FileHeader)
	h.Crc, _, err = crcOf(h, func(m proto.Message) { m.(*pb.FileHeader).Crc = 0 })
	if err != nil {
		return err
	}
	if _, err := protodelim.MarshalTo(buf, h); err != nil {
		return err
	}
	var w io.Writer = buf
	var enc *zstd.Encoder
	if h.Compression == pb.FileCompression_COMPRESSION_ZSTD {
		if enc, err = zstd.NewWriter(buf); err != nil {
			return err
		}
		w = enc
	}
	running := crc64.New(table)
	ft := &pb.FileFooter{}
	for i, r := range in.records {
		r = proto.Clone(r).(*pb.Record)
		sum, data, err := crcOf(r, func(m proto.Message) { m.(*pb.Record).Crc = 0 })
		if err != nil {
			return err
		}
		r.Crc = sum
		running.Write(data)
		if _, err := protodelim.MarshalTo(w, r); err != nil {
			return err
		}
		if i == 0 {
			ft.FirstRevision = r.Revision
		}
		ft.LastRevision = r.Revision
	}
	ft.RecordsCrc = running.Sum64()
	ft.Crc, _, err = crcOf(ft, func(m proto.Message) { m.(*pb.FileFooter).Crc = 0 })
	if err != nil {
		return err
	}
	if _, err := protodelim.MarshalTo(w, ft); err != nil {
		return err
	}
	if enc != nil {
		if err := enc.Close(); err != nil {
			return err
		}
	}
	return buf.Flush()
}

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: go-reader check FILE... | rewrite IN OUT | expect-invalid FILE")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "check":
		for _, p := range os.Args[2:] {
			f, err := read(p)
			if err != nil {
				fmt.Fprintf(os.Stderr, "%s: error: %v\n", p, err)
				os.Exit(1)
			}
			for _, r := range f.records {
				data, _ := protojson.Marshal(r)
				fmt.Println(string(data))
			}
			fmt.Printf("OK %s kind=%s records=%d revisions=%d..%d\n", p, f.header.Kind, len(f.records), f.footer.FirstRevision, f.footer.LastRevision)
		}
	case "rewrite":
		if len(os.Args) != 4 {
			os.Exit(2)
		}
		f, err := read(os.Args[2])
		if err == nil {
			err = write(os.Args[3], f)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "error: %v\n", err)
			os.Exit(1)
		}
	case "expect-invalid":
		if _, err := read(os.Args[2]); err == nil {
			fmt.Fprintf(os.Stderr, "%s: unexpectedly valid\n", os.Args[2])
			os.Exit(1)
		} else {
			fmt.Printf("rejected %s: %v\n", os.Args[2], err)
		}
	default:
		os.Exit(2)
	}
}
