package env

import (
	"context"
	"reflect"
	"testing"
)

func TestEnvMapsLikeConfd(t *testing.T) {
	src := &Source{Environ: func() []string {
		return []string{"DATABASE_HOST=db1", "DATABASE_HOST_NAME=n", "DATABASEX=no", "OTHER=o", "BROKEN"}
	}}
	snap, err := src.Fetch(context.Background(), "/database/host")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"/database/host": "db1", "/database/host/name": "n"}
	if got := snap.Tree.Leaves("/"); !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	snap, _ = src.Fetch(context.Background(), "/database")
	if _, ok := snap.Tree.Get("/databasex"); ok {
		t.Fatal("/database covered /databasex")
	}
}
