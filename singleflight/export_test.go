package singleflight

// OnJoin has fn called each time a caller of g has joined a flight (DoChan has registered it),
// so that a test can start a flight's end only once every caller is in it.
func OnJoin[T any](g *Group[T], fn func(key string)) { g.joined = fn }
