// Command reflect-client lists what a gRPC server says about itself through server reflection,
// using grpc-go's own reflection stubs in either protocol version (grpc.reflection.v1 or
// grpc.reflection.v1alpha). kforge's tests (tests/reflection.rs) run it as a client that is not
// tonic; tests/peers/build.sh builds it.
//
//	reflect-client -addr 127.0.0.1:7600 -api v1alpha
//
// It lists the services, asks for the file that defines each one, fetches that file's imports by
// name until the descriptors form a complete set, checks the set with protodesc, and prints
//
//	service kforge.signer.v1.Signer
//	method kforge.signer.v1.Signer/SignModules
//
// one line per service and per method, services sorted. Any error exits non-zero.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	refv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	refv1alpha "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
)

// reflector is one reflection stream, whichever version of the protocol it speaks. Both methods
// return serialized FileDescriptorProtos or service names as the server sent them.
type reflector interface {
	listServices() ([]string, error)
	fileContainingSymbol(symbol string) ([][]byte, error)
	fileByFilename(name string) ([][]byte, error)
	close() error
}

func serverError(code int32, message string) error {
	return fmt.Errorf("server answered with error %d: %s", code, message)
}

// v1 speaks grpc.reflection.v1.
type v1 struct {
	stream grpc.BidiStreamingClient[refv1.ServerReflectionRequest, refv1.ServerReflectionResponse]
}

func (r v1) ask(req *refv1.ServerReflectionRequest) (*refv1.ServerReflectionResponse, error) {
	if err := r.stream.Send(req); err != nil {
		return nil, fmt.Errorf("send: %w", err)
	}
	resp, err := r.stream.Recv()
	if err != nil {
		return nil, fmt.Errorf("receive: %w", err)
	}
	if e := resp.GetErrorResponse(); e != nil {
		return nil, serverError(e.GetErrorCode(), e.GetErrorMessage())
	}
	return resp, nil
}

func (r v1) listServices() ([]string, error) {
	resp, err := r.ask(&refv1.ServerReflectionRequest{MessageRequest: &refv1.ServerReflectionRequest_ListServices{ListServices: "*"}})
	if err != nil {
		return nil, err
	}
	list := resp.GetListServicesResponse()
	if list == nil {
		return nil, errors.New("the answer to ListServices holds no service list")
	}
	var names []string
	for _, s := range list.GetService() {
		names = append(names, s.GetName())
	}
	return names, nil
}

func (r v1) files(req *refv1.ServerReflectionRequest) ([][]byte, error) {
	resp, err := r.ask(req)
	if err != nil {
		return nil, err
	}
	fds := resp.GetFileDescriptorResponse()
	if fds == nil {
		return nil, errors.New("the answer holds no file descriptors")
	}
	return fds.GetFileDescriptorProto(), nil
}

func (r v1) fileContainingSymbol(symbol string) ([][]byte, error) {
	return r.files(&refv1.ServerReflectionRequest{MessageRequest: &refv1.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: symbol}})
}

func (r v1) fileByFilename(name string) ([][]byte, error) {
	return r.files(&refv1.ServerReflectionRequest{MessageRequest: &refv1.ServerReflectionRequest_FileByFilename{FileByFilename: name}})
}

func (r v1) close() error { return r.stream.CloseSend() }

// v1alpha speaks grpc.reflection.v1alpha: the same messages in another package.
type v1alpha struct {
	stream grpc.BidiStreamingClient[refv1alpha.ServerReflectionRequest, refv1alpha.ServerReflectionResponse]
}

func (r v1alpha) ask(req *refv1alpha.ServerReflectionRequest) (*refv1alpha.ServerReflectionResponse, error) {
	if err := r.stream.Send(req); err != nil {
		return nil, fmt.Errorf("send: %w", err)
	}
	resp, err := r.stream.Recv()
	if err != nil {
		return nil, fmt.Errorf("receive: %w", err)
	}
	if e := resp.GetErrorResponse(); e != nil {
		return nil, serverError(e.GetErrorCode(), e.GetErrorMessage())
	}
	return resp, nil
}

func (r v1alpha) listServices() ([]string, error) {
	resp, err := r.ask(&refv1alpha.ServerReflectionRequest{MessageRequest: &refv1alpha.ServerReflectionRequest_ListServices{ListServices: "*"}})
	if err != nil {
		return nil, err
	}
	list := resp.GetListServicesResponse()
	if list == nil {
		return nil, errors.New("the answer to ListServices holds no service list")
	}
	var names []string
	for _, s := range list.GetService() {
		names = append(names, s.GetName())
	}
	return names, nil
}

func (r v1alpha) files(req *refv1alpha.ServerReflectionRequest) ([][]byte, error) {
	resp, err := r.ask(req)
	if err != nil {
		return nil, err
	}
	fds := resp.GetFileDescriptorResponse()
	if fds == nil {
		return nil, errors.New("the answer holds no file descriptors")
	}
	return fds.GetFileDescriptorProto(), nil
}

func (r v1alpha) fileContainingSymbol(symbol string) ([][]byte, error) {
	return r.files(&refv1alpha.ServerReflectionRequest{MessageRequest: &refv1alpha.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: symbol}})
}

func (r v1alpha) fileByFilename(name string) ([][]byte, error) {
	return r.files(&refv1alpha.ServerReflectionRequest{MessageRequest: &refv1alpha.ServerReflectionRequest_FileByFilename{FileByFilename: name}})
}

func (r v1alpha) close() error { return r.stream.CloseSend() }

// descriptors collects the files the server sent, by name.
type descriptors map[string]*descriptorpb.FileDescriptorProto

// add decodes serialized files and then fetches, by name, every import not seen yet.
func (d descriptors) add(r reflector, raw [][]byte) error {
	if len(raw) == 0 {
		return errors.New("the server sent no file descriptor")
	}
	var added []*descriptorpb.FileDescriptorProto
	for _, b := range raw {
		fd := &descriptorpb.FileDescriptorProto{}
		if err := proto.Unmarshal(b, fd); err != nil {
			return fmt.Errorf("decode a file descriptor: %w", err)
		}
		if _, ok := d[fd.GetName()]; !ok {
			d[fd.GetName()] = fd
			added = append(added, fd)
		}
	}
	for _, fd := range added {
		for _, dep := range fd.GetDependency() {
			if _, ok := d[dep]; ok {
				continue
			}
			more, err := r.fileByFilename(dep)
			if err != nil {
				return fmt.Errorf("FileByFilename %s (imported by %s): %w", dep, fd.GetName(), err)
			}
			if err := d.add(r, more); err != nil {
				return err
			}
		}
	}
	return nil
}

func run(addr, api string, timeout time.Duration, out *bufio.Writer) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("connect to %s: %w", addr, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	var r reflector
	switch api {
	case "v1":
		s, err := refv1.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
		if err != nil {
			return fmt.Errorf("open grpc.reflection.v1 stream: %w", err)
		}
		r = v1{s}
	case "v1alpha":
		s, err := refv1alpha.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
		if err != nil {
			return fmt.Errorf("open grpc.reflection.v1alpha stream: %w", err)
		}
		r = v1alpha{s}
	default:
		return fmt.Errorf("-api must be v1 or v1alpha, not %q", api)
	}

	services, err := r.listServices()
	if err != nil {
		return fmt.Errorf("ListServices: %w", err)
	}
	if len(services) == 0 {
		return errors.New("ListServices: the server lists no service")
	}
	sort.Strings(services)
	files := descriptors{}
	for _, name := range services {
		raw, err := r.fileContainingSymbol(name)
		if err != nil {
			return fmt.Errorf("FileContainingSymbol %s: %w", name, err)
		}
		if err := files.add(r, raw); err != nil {
			return fmt.Errorf("FileContainingSymbol %s: %w", name, err)
		}
	}
	if err := r.close(); err != nil {
		return fmt.Errorf("close the stream: %w", err)
	}

	set := &descriptorpb.FileDescriptorSet{}
	for _, fd := range files {
		set.File = append(set.File, fd)
	}
	registry, err := protodesc.NewFiles(set)
	if err != nil {
		return fmt.Errorf("the descriptors the server sent are not a valid set: %w", err)
	}
	for _, name := range services {
		desc, err := registry.FindDescriptorByName(protoreflect.FullName(name))
		if err != nil {
			return fmt.Errorf("service %s is in none of the files the server sent: %w", name, err)
		}
		service, ok := desc.(protoreflect.ServiceDescriptor)
		if !ok {
			return fmt.Errorf("%s is listed as a service but its descriptor is a %T", name, desc)
		}
		fmt.Fprintf(out, "service %s\n", name)
		methods := service.Methods()
		for i := 0; i < methods.Len(); i++ {
			fmt.Fprintf(out, "method %s/%s\n", name, methods.Get(i).Name())
		}
	}
	return nil
}

func main() {
	addr := flag.String("addr", "", "the server, host:port (plaintext)")
	api := flag.String("api", "v1", "reflection protocol: v1 or v1alpha")
	timeout := flag.Duration("timeout", 30*time.Second, "give up after this long")
	flag.Parse()
	if *addr == "" || flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: reflect-client -addr HOST:PORT [-api v1|v1alpha] [-timeout 30s]")
		os.Exit(2)
	}
	out := bufio.NewWriter(os.Stdout)
	if err := run(*addr, *api, *timeout, out); err != nil {
		fmt.Fprintf(os.Stderr, "reflect-client: %s\n", err)
		os.Exit(1)
	}
	if err := out.Flush(); err != nil {
		fmt.Fprintf(os.Stderr, "reflect-client: write: %s\n", err)
		os.Exit(1)
	}
}
